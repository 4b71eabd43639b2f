"""The personalization processor: consumer group ``personalization`` and a window timer.

It runs inside ``tessera worker`` next to the profiles processor, as its own
consumer group of the ``events`` topic (behaviour: computed traits, offer
outcomes, audience changes) and of the ``derived`` topic (``identity.merged``,
``identity.unmerged``, ``profile.erased``),
so the profiles processor never waits for it. An event is handled once the
profiles processor has applied it (its profile and traits are then known).
Every ``tick`` seconds it looks for profiles whose window edge passed.

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
from dataclasses import dataclass
from typing import Any

import structlog

from tessera.activation.delivery import Profiles
from tessera.bus.base import Bus, BusUnavailable, Delivery
from tessera.events import DERIVED_TOPIC, EVENTS_TOPIC
from tessera.events.envelope import Event
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


class PersonalizationService:
    def __init__(self, config: PersonalizationConfig, bus: Bus, store: Store, state: State,
                 *, batch_size: int = 500, tick: float = 0.25,
                 profile_wait_seconds: float = 10.0, max_attempts: int = 5,
                 retry_backoff: float = 0.2) -> None:
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
        self.stats = ServiceStats()
        self._stop = asyncio.Event()

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
        tasks = [asyncio.create_task(self._loop(self.step, t)) for t in TOPICS]
        tasks.append(asyncio.create_task(self._loop(self._tick)))
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
            n = 0
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

    async def relay(self) -> int:
        relayed = await relay_outbox(self.state, self.bus, 500)
        self.stats.relayed += relayed
        return relayed
