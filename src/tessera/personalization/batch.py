"""Whole-population jobs: evaluate every audience over every profile; rebuild from timelines.

Both go through the same :class:`~tessera.personalization.engine.Personalizer`
as the real-time path, one state transaction per chunk of profiles, so a
membership that changes emits the same ``segment.entered`` / ``segment.exited``
events (reason ``batch``, ``rebuild``, ``saved`` or ``deleted``) and nothing is
emitted for a membership that stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tessera.personalization.engine import EXITED, Cause, Outcome, Personalizer
from tessera.personalization.queries import timeline_events


@dataclass(slots=True)
class BatchReport:
    profiles: int = 0
    entered: int = 0
    exited: int = 0
    dropped: int = 0
    seconds: float = 0.0


def _chunks(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for pid in ids:
        chunk.append(pid)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _add(report: BatchReport, outcome: Outcome) -> None:
    report.entered += outcome.entered
    report.exited += outcome.exited


def evaluate_all(engine: Personalizer, chunk: int = 500,
                 progress: Callable[[int], None] | None = None, *,
                 only: set[str] | None = None, run: str | None = None,
                 reason: str = "batch") -> BatchReport:
    """Evaluate every audience for every live profile; memberships follow the result.

    ``only`` limits the changes to these audiences (a saved audience being filled in:
    reason ``saved``). ``run`` names the run in the events' causes; two workers filling
    in the same saved audience give the same name, so their events have the same ids
    and the bus keeps one of each.
    """
    report = BatchReport()
    started = time.perf_counter()
    run = run or f"batch:{time.time()!r}"
    for pids in _chunks(engine.store.iter_profile_ids(), chunk):
        outcome = Outcome()
        now = engine.clock()
        profiles = engine.read_profiles(pids)
        with engine.state.transaction() as tx:
            tx.lock(pids)
            states = tx.trait_states(pids)
            members = tx.memberships(pids)
            for pid in pids:
                engine.evaluate(tx, pid, states[pid], members[pid],
                                Cause(f"{run}:{pid}", reason), now, outcome, profiles[pid],
                                only)
            engine.queue(tx, outcome)
        report.profiles += len(pids)
        _add(report, outcome)
        if progress is not None:
            progress(report.profiles)
    report.seconds = time.perf_counter() - started
    return report


def retire(engine: Personalizer, audience: str, chunk: int = 500) -> BatchReport:
    """Every member of an audience that is no longer defined (a saved audience deleted, a
    configured one removed) exits, with a ``segment.exited`` event of reason ``deleted``."""
    report = BatchReport()
    started = time.perf_counter()
    after: str | None = None
    while True:
        page = engine.state.members(audience, after, chunk)
        if not page:
            break
        after = page[-1][0]
        pids = [pid for pid, _ in page]
        outcome = Outcome()
        now = engine.clock()
        with engine.state.transaction() as tx:
            tx.lock(pids)
            members = tx.memberships(pids)
            for pid in pids:
                since = members[pid].get(audience)
                if since is None:
                    continue  # left meanwhile
                tx.leave(audience, pid)
                outcome.exited += 1
                # the membership's start in the cause: a later audience of the same name
                # and its deletion give other event ids
                cause = Cause(f"deleted:{audience}:{since!r}", "deleted")
                outcome.events.append(engine.segment_event(EXITED, audience, pid, cause, now,
                                                           since=since))
            engine.queue(tx, outcome)
        report.profiles += len(pids)
        _add(report, outcome)
    report.seconds = time.perf_counter() - started
    return report


def rebuild(engine: Personalizer, chunk: int = 200,
            progress: Callable[[int], None] | None = None) -> BatchReport:
    """Recompute every profile's computed traits and offer history from its stored timeline.

    Run it with the workers stopped (as ``tessera replay --rebuild``): events
    applied meanwhile could be counted twice. Profiles the store no longer has
    (merged away) leave their audiences and are forgotten.
    """
    report = BatchReport()
    started = time.perf_counter()
    live: set[str] = set()
    for pids in _chunks(engine.store.iter_profile_ids(), chunk):
        outcome = Outcome()
        with engine.state.transaction() as tx:
            for pid in pids:
                engine.rebuild_profile(tx, pid, timeline_events(engine.store, pid), outcome)
            engine.queue(tx, outcome)
        live.update(pids)
        report.profiles += len(pids)
        _add(report, outcome)
        if progress is not None:
            progress(report.profiles)
    stale = [p for p in engine.state.profile_ids() if p not in live]
    if stale:
        outcome = Outcome()
        now = engine.clock()
        with engine.state.transaction() as tx:
            tx.lock(stale)
            members = tx.memberships(stale)
            for pid in stale:
                cause = Cause(f"rebuild:{pid}:{now!r}", "rebuild")
                for audience, since in members[pid].items():
                    outcome.exited += 1
                    outcome.events.append(engine.segment_event("segment.exited", audience, pid,
                                                               cause, now, since=since))
            tx.drop(stale)
            engine.queue(tx, outcome)
        report.dropped = len(stale)
        _add(report, outcome)
    report.seconds = time.perf_counter() - started
    return report
