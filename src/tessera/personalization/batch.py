"""Whole-population jobs: evaluate every audience over every profile; rebuild from timelines.

Both go through the same :class:`~tessera.personalization.engine.Personalizer`
as the real-time path, one state transaction per chunk of profiles, so a
membership that changes emits the same ``segment.entered`` / ``segment.exited``
events (reason ``batch``, ``rebuild``, ``saved`` or ``deleted``) and nothing is
emitted for a membership that stays.
"""

from __future__ import annotations

import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.personalization.engine import EXITED, Cause, Outcome, Personalizer
from tessera.personalization.model import AudienceConfig
from tessera.personalization.queries import timeline_events

if TYPE_CHECKING:
    from tessera.config import TesseraConfig
    from tessera.runtime import Runtime


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
                 reason: str = "batch", processes: int = 1,
                 spec: EngineSpec | None = None) -> BatchReport:
    """Evaluate every audience for every live profile; memberships follow the result.

    ``only`` limits the changes to these audiences (a saved audience being filled in:
    reason ``saved``). ``run`` names the run in the events' causes; two workers filling
    in the same saved audience give the same name, so their events have the same ids
    and the bus keeps one of each.

    Each chunk is evaluated outside the state's write lock and written under it (see
    :func:`_evaluate_chunk`), so with ``processes`` > 1 (and a ``spec`` to open the
    engine again in each process) the profiles are split among that many processes,
    which evaluate on their own cores while one of them writes.
    """
    started = time.perf_counter()
    run = run or f"batch:{time.time()!r}"
    if processes > 1 and spec is not None:
        report = _in_processes(spec, processes, chunk, only, run, reason)
        if progress is not None:
            progress(report.profiles)
    else:
        report = _evaluate_part(engine, chunk, progress, only, run, reason)
    report.seconds = time.perf_counter() - started
    return report


def _evaluate_part(engine: Personalizer, chunk: int, progress: Callable[[int], None] | None,
                   only: set[str] | None, run: str, reason: str,
                   part: tuple[int, int] = (0, 1)) -> BatchReport:
    """The profiles of one part (``part`` = (k, n): those whose id hashes to k of n)."""
    report = BatchReport()
    k, n = part
    # read up front: a cursor left open across the chunks' transactions would hold a
    # read snapshot on the store's connection, and SQLite refuses (busy, at once) to
    # begin a write there once another process or thread has written meanwhile
    ids = [pid for pid in engine.store.iter_profile_ids()
           if n == 1 or zlib.crc32(pid.encode()) % n == k]
    for pids in _chunks(iter(ids), chunk):
        outcome = _evaluate_chunk(engine, pids, only, run, reason)
        report.profiles += len(pids)
        _add(report, outcome)
        if progress is not None:
            progress(report.profiles)
    return report


class _Planned:
    """Stands for the state transaction while a chunk is evaluated outside the lock: the
    memberships one profile enters and leaves, and the events that say so, to be written
    under the lock if nothing changed meanwhile."""

    __slots__ = ("changes", "outcome")

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, float | None]] = []
        self.outcome = Outcome()

    def enter(self, audience: str, profile_id: str, since: float) -> None:
        self.changes.append((audience, profile_id, since))

    def leave(self, audience: str, profile_id: str) -> None:
        self.changes.append((audience, profile_id, None))


def _evaluate_chunk(engine: Personalizer, pids: list[str], only: set[str] | None, run: str,
                    reason: str) -> Outcome:
    """Evaluate a chunk from what its profiles hold, then write what changed.

    The evaluation and the entry and exit events (most of the CPU) are made between two
    short state transactions: the first reads the aggregates and memberships (a read
    snapshot: with SQLite it takes no write lock), the second reads them again, under
    the lock, and writes. A profile whose aggregates or
    memberships changed in between (an event applied meanwhile) is evaluated again
    inside the lock, so the result is what one transaction would have given.
    """
    now = engine.clock()
    profiles = engine.read_profiles(pids)
    with engine.state.reading() as tx:  # SQLite: no write lock, the other processes write
        states = tx.trait_states(pids)
        before = tx.memberships(pids)
    plans: dict[str, _Planned] = {}
    for pid in pids:
        plan = plans[pid] = _Planned()
        engine.follow(plan, pid, engine.wanted(pid, states[pid], now, profiles[pid]),
                      dict(before[pid]), Cause(f"{run}:{pid}", reason), now, plan.outcome, only)
    outcome = Outcome()
    with engine.state.transaction() as tx:
        tx.lock(pids)
        current_states = tx.trait_states(pids)
        members = tx.memberships(pids)
        for pid in pids:
            plan = plans[pid]
            if current_states[pid] == states[pid] and members[pid] == before[pid]:
                for audience, profile_id, since in plan.changes:
                    if since is None:
                        tx.leave(audience, profile_id)
                    else:
                        tx.enter(audience, profile_id, since)
                outcome.entered += plan.outcome.entered
                outcome.exited += plan.outcome.exited
                outcome.events += plan.outcome.events
            else:
                want = engine.wanted(pid, current_states[pid], now, profiles[pid])
                engine.follow(tx, pid, want, members[pid], Cause(f"{run}:{pid}", reason), now,
                              outcome, only)
        engine.queue(tx, outcome)
    return outcome


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What another process needs to open an engine on the same store and state."""

    config: TesseraConfig
    data_dir: Path
    store_url: str | None
    audiences: list[AudienceConfig]

    @classmethod
    def of(cls, runtime: Runtime, engine: Personalizer) -> EngineSpec:
        return cls(runtime.config, runtime.data_dir, runtime.store_url, list(engine.audiences))


def _in_processes(spec: EngineSpec, processes: int, chunk: int, only: set[str] | None,
                  run: str, reason: str) -> BatchReport:
    # spawned, not forked: the caller's threads (bus writer, checkpointer) and open
    # SQLite connections must not be copied into the children
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(_part_in_process, [(spec, (k, processes), chunk, only, run, reason)
                                                for k in range(processes)])
    report = BatchReport()
    for part in parts:
        report.profiles += part.profiles
        report.entered += part.entered
        report.exited += part.exited
    return report


def _part_in_process(spec: EngineSpec, part: tuple[int, int], chunk: int,
                     only: set[str] | None, run: str, reason: str) -> BatchReport:
    from tessera.personalization.state import open_state
    from tessera.runtime import Runtime

    runtime = Runtime(spec.config, spec.data_dir, store_url=spec.store_url)
    state = open_state(runtime.store_url, runtime.data_dir)
    try:
        engine = Personalizer(spec.config.personalization, runtime.store, state)
        engine.set_audiences(spec.audiences)
        return _evaluate_part(engine, chunk, None, only, run, reason, part)
    finally:
        state.close()
        runtime.store.close()
        if "records" in runtime.__dict__:  # opened to check the encryption keys
            runtime.records.close()


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
                    outcome.events.append(engine.segment_event(EXITED, audience, pid,
                                                               cause, now, since=since))
            tx.drop(stale)
            engine.queue(tx, outcome)
        report.dropped = len(stale)
        _add(report, outcome)
    report.seconds = time.perf_counter() - started
    return report
