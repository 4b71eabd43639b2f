"""The personalization processor: consumer group ``personalization`` and a window timer.

It runs inside ``tessera worker`` next to the profiles processor, as its own
consumer group of the ``events`` topic (behaviour: computed traits, offer
outcomes, audience changes) and of the ``derived`` topic (``identity.merged``,
``identity.unmerged``, ``profile.erased``),
so the profiles processor never waits for it. An event is handled once the
profiles processor has applied it (its profile and traits are then known).
Every ``tick`` seconds it looks for profiles whose window edge passed.

Every ``refresh`` seconds it picks up audiences saved or deleted through the
API (``POST|DELETE /v1/audiences``), which live in the personalization state
that every process shares: a saved audience is evaluated for every existing
profile (members enter with ``segment.entered``, reason ``saved``) and from
then on like a configured one; the members of a deleted audience, or of one
removed from the configuration, exit (``segment.exited``, reason ``deleted``).

Order per batch, as in the profiles processor: the state commits the effects,
the applied-event record and the ``segment.*`` events together; the outbox is
relayed to the bus; only then are the deliveries acknowledged. A batch that
fails is applied again event by event; an event that keeps failing goes to
the dead letters of the group after ``processor.max_attempts`` deliveries
(``tessera dlq list --group personalization``), and an outage of the state
is retried without blaming any event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import structlog

from tessera.activation.delivery import Profiles
from tessera.bus.base import Bus, BusUnavailable, Delivery
from tessera.events import DERIVED_TOPIC, EVENTS_TOPIC
from tessera.events.envelope import Event
from tessera.personalization.audiences import usable
from tessera.personalization.batch import evaluate_all, retire
from tessera.personalization.engine import Outcome, Personalizer
from tessera.personalization.model import PersonalizationConfig
from tessera.personalization.queries import timeline_events
from tessera.personalization.state import State, open_state
from tessera.processing.profiles import decode
from tessera.processing.worker import describe, is_transient, relay_outbox
from tessera.store.base import Store

log = structlog.get_logger("tessera.personalization")

GROUP = "personalization"
TOPICS = (EVENTS_TOPIC, DERIVED_TOPIC)
MERGED = "identity.merged"
UNMERGED = "identity.unmerged"
ERASED = "profile.erased"


@dataclass(slots=True)
class ServiceStats:
    events: int = 0
    merges: int = 0
    expired: int = 0
    entered: int = 0
    exited: int = 0
    relayed: int = 0
    audiences_filled: int = 0
    audiences_retired: int = 0


def consumer_groups() -> list[tuple[str, str]]:
    """(topic, consumer group) of the personalization processor, for lag reports."""
    return [(topic, GROUP) for topic in TOPICS]


RETIRED_WATCH_SECONDS = 30.0
"""How long a deleted audience is checked again for members a worker that had not seen
the deletion yet let in; after that it is checked when the saved audiences change."""


class PersonalizationService:
    def __init__(self, config: PersonalizationConfig, bus: Bus, store: Store, state: State,
                 *, batch_size: int = 500, tick: float = 0.25,
                 profile_wait_seconds: float = 10.0, max_attempts: int = 5,
                 retry_backoff: float = 0.2, refresh: float = 1.0) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.state = state
        self.engine = Personalizer(config, store, state)
        self.profiles = Profiles(store, profile_wait_seconds)
        self.batch_size = batch_size
        self.tick = tick
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.refresh_seconds = refresh
        self.stats = ServiceStats()
        self._stop = asyncio.Event()
        self._audiences_version: tuple[int, float, int] | None = None
        self._retired: dict[str, float] = {}

    @classmethod
    def from_runtime(cls, runtime: Any, **kwargs: Any) -> PersonalizationService:
        state = open_state(runtime.store_url, runtime.data_dir)
        processor = runtime.config.processor  # the same retry policy as the profiles processor
        kwargs.setdefault("max_attempts", processor.max_attempts)
        kwargs.setdefault("retry_backoff", processor.retry_backoff_seconds)
        return cls(runtime.config.personalization, runtime.bus, runtime.store, state, **kwargs)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # -- running ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if not self.enabled:
            return
        await asyncio.to_thread(self.state.migrate)
        log.info("personalization.started", computed=len(self.engine.computed.traits),
                 audiences=len(self.config.audiences), actions=len(self.config.actions))
        await self.relay()
        # the saved audiences before any event: an event evaluated without one that was
        # filled in already would leave its profile out of it
        while not self._stop.is_set():
            try:
                await self.refresh_audiences()
                break
            except Exception as exc:
                log.error("personalization.refresh_failed", error=describe(exc))
                await self._sleep(1.0)
        tasks = [asyncio.create_task(self._loop(self.step, t)) for t in TOPICS]
        tasks.append(asyncio.create_task(self._loop(self._tick)))
        tasks.append(asyncio.create_task(self._loop(self._refresh)))
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.state.close)

    async def _tick(self) -> int:
        n = await self.expire_due()
        await self._sleep(self.tick)
        return n

    async def _refresh(self) -> int:
        await self._sleep(self.refresh_seconds)
        return await self.refresh_audiences()

    async def _loop(self, fn: Any, *args: Any) -> None:
        while not self._stop.is_set():
            try:
                await fn(*args) if args else await fn()
            except BusUnavailable as exc:
                log.warning("personalization.bus_unavailable", error=str(exc))
                await self._sleep(1.0)
            except Exception as exc:  # nothing acknowledged: it comes again
                log.error("personalization.step_failed", error=f"{type(exc).__name__}: {exc}")
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run_until_idle(self) -> None:
        """Handle what is on the bus and what windows are due (tests, benchmarks)."""
        await asyncio.to_thread(self.state.migrate)
        while True:
            n = await self.refresh_audiences()
            for topic in TOPICS:
                n += await self.step(topic, 0.02)
            n += await self.expire_due()
            if not n:
                return

    # -- one batch ----------------------------------------------------------------------

    async def step(self, topic: str, timeout: float = 0.25) -> int:
        deliveries = await self.bus.fetch(topic, GROUP, self.batch_size, timeout)
        if not deliveries:
            return 0
        events: list[Event] = []
        good: list[Delivery] = []
        for d in deliveries:
            try:
                events.append(decode(d.payload))
                good.append(d)
            except Exception as exc:
                await self.bus.dead_letter(d, f"undecodable event: {type(exc).__name__}: {exc}")
        if topic == EVENTS_TOPIC and events:
            await self.profiles.wait_applied([e.uid for e in events])
        try:
            await asyncio.to_thread(self._handle, topic, events)
        except Exception as exc:
            if is_transient(exc):
                await self.bus.nack(good, 1.0)  # the state is down, not the events
                raise
            log.warning("personalization.batch_failed", size=len(events), error=describe(exc))
            await self._one_by_one(topic, good, events)
            return len(deliveries)
        await self.relay()
        await self.bus.ack(good)
        return len(deliveries)

    def _handle(self, topic: str, events: list[Event]) -> None:
        if topic == EVENTS_TOPIC:
            outcome = self._apply_events(events)
            self.stats.events += outcome.applied
            self._count(outcome)
            return
        for event in events:
            if event.type == MERGED:
                outcome = self.engine.merge(event)
                self.stats.merges += outcome.applied
            elif event.type == ERASED:
                outcome = self.engine.erase(event)
            elif event.type == UNMERGED:
                outcome = self.engine.unmerge(
                    event, lambda pid: timeline_events(self.store, pid))
            else:
                continue
            self._count(outcome)

    async def _one_by_one(self, topic: str, deliveries: list[Delivery],
                          events: list[Event]) -> None:
        """A batch failed: apply its events one at a time, so one bad event holds back
        nothing but itself; after ``max_attempts`` deliveries it goes to the dead letters."""
        for index, (delivery, event) in enumerate(zip(deliveries, events, strict=True)):
            try:
                await asyncio.to_thread(self._handle, topic, [event])
            except Exception as exc:
                if is_transient(exc):
                    await self.bus.nack(deliveries[index:], 1.0)
                    raise
                await self.relay()
                if delivery.attempts >= self.max_attempts:
                    log.error("personalization.dead_lettered", uid=event.uid,
                              attempts=delivery.attempts, error=describe(exc))
                    await self.bus.dead_letter(delivery, describe(exc))
                    continue
                await self.bus.nack(deliveries[index:],
                                    self.retry_backoff * (2 ** (delivery.attempts - 1)))
                return
            await self.relay()
            await self.bus.ack([delivery])

    def _apply_events(self, events: list[Event]) -> Outcome:
        cache: dict[tuple[tuple[str, str], ...], str | None] = {}
        pairs: list[tuple[Event, str | None]] = []
        for event in events:
            key = tuple(event.identifiers)
            if key not in cache:
                cache[key] = self.profiles.profile_id(event)
            pairs.append((event, cache[key]))
        return self.engine.apply(pairs)

    def _count(self, outcome: Outcome) -> None:
        self.stats.entered += outcome.entered
        self.stats.exited += outcome.exited

    async def expire_due(self, limit: int = 500) -> int:
        due = await asyncio.to_thread(self.state.due, self.engine.clock(), limit)
        if not due:
            return 0
        outcome = await asyncio.to_thread(self.engine.expire, due)
        self.stats.expired += outcome.applied
        self._count(outcome)
        await self.relay()
        return outcome.applied

    # -- saved audiences -----------------------------------------------------------------

    async def refresh_audiences(self) -> int:
        """Pick up audiences saved or deleted since the last look; the memberships changed.

        Cheap when nothing changed (one small read of the state's version). Otherwise the
        engine takes the new list at once (events from now on are evaluated against it),
        every saved audience not evaluated yet is filled in over all existing profiles,
        and the members of audiences no longer defined exit. A worker that stops halfway
        does the rest when it starts again (``evaluated`` is recorded per definition).
        """
        version = await asyncio.to_thread(self.state.audiences_version)
        changes = 0
        if version != self._audiences_version:
            saved = await asyncio.to_thread(self.state.saved_audiences)
            self.engine.set_audiences(usable(self.config, saved))
            names = self.engine.audience_names
            for audience in saved:
                if audience.evaluated or audience.name not in names:
                    continue
                changes += await self._fill_in(audience.name, audience.updated_at)
                await asyncio.to_thread(self.state.mark_evaluated, audience.name,
                                        audience.digest)
            sizes = await asyncio.to_thread(self.state.sizes)
            for name in sorted(set(sizes) - names):
                changes += await self._retire(name)
            self._audiences_version = version
        now = time.monotonic()
        for name, until in list(self._retired.items()):
            if until < now or name in self.engine.audience_names:
                del self._retired[name]
            elif await asyncio.to_thread(self.state.members, name, None, 1):
                changes += await self._retire(name)
        return changes

    async def _fill_in(self, name: str, updated_at: float) -> int:
        """Evaluate a saved audience (and the audiences whose rules refer to it) over every
        existing profile: those that match enter (``segment.entered``, reason ``saved``)."""
        only = {name}
        for audience in self.engine.audiences:  # dependency order: one pass finds them all
            if audience.rule.audiences() & only:
                only.add(audience.name)
        report = await asyncio.to_thread(evaluate_all, self.engine, only=only,
                                         run=f"saved:{name}:{updated_at!r}", reason="saved")
        self.stats.audiences_filled += 1
        self.stats.entered += report.entered
        self.stats.exited += report.exited
        log.info("audience.filled_in", audience=name, profiles=report.profiles,
                 entered=report.entered, exited=report.exited, seconds=round(report.seconds, 3))
        await self.relay()
        return report.entered + report.exited

    async def _retire(self, name: str) -> int:
        report = await asyncio.to_thread(retire, self.engine, name)
        self.stats.audiences_retired += 1
        self.stats.exited += report.exited
        self._retired[name] = time.monotonic() + RETIRED_WATCH_SECONDS
        log.info("audience.retired", audience=name, exited=report.exited)
        await self.relay()
        return report.exited

    async def relay(self) -> int:
        relayed = await relay_outbox(self.state, self.bus, 500)
        self.stats.relayed += relayed
        return relayed
