"""The consume loop: fetch a batch, apply it, relay the outbox, acknowledge.

Order matters for exactly-once effects: the store commits the effects and the
record of applied events first; the derived events are then relayed from the
store's outbox to the bus; only then is the batch acknowledged. A crash at any
point leads to a redelivery that finds its events recorded and changes nothing.

A batch that fails is retried event by event, so one poison event never holds
back the others; after ``max_attempts`` deliveries it goes to the dead letters
with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import psycopg
import psycopg_pool
import structlog

from tessera.bus.base import Bus, BusUnavailable, Delivery, Message
from tessera.config import ProcessorConfig
from tessera.events import EVENTS_TOPIC
from tessera.events.envelope import Event
from tessera.observability import metrics, tracing
from tessera.processing.profiles import BatchResult, ProfileProcessor, decode
from tessera.store.base import Store, StoreUnavailable

PROFILES_GROUP = "profiles"

log = structlog.get_logger("tessera.worker")


@dataclass(slots=True)
class WorkerStats:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retried: int = 0
    relayed: int = 0


def is_transient(exc: BaseException) -> bool:
    """An outage of the store (retry everything later), not a bad event (dead-letter it)."""
    if isinstance(exc, StoreUnavailable | sqlite3.OperationalError | psycopg.OperationalError
                  | psycopg_pool.PoolTimeout):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and "locked" in str(exc)


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class OutboxRow(Protocol):
    id: int
    topic: str
    key: str
    payload: bytes

    @property
    def message_id(self) -> str: ...


class Outbox(Protocol):
    """Anything with a transactional outbox: the store, the journey and the
    personalization state."""

    def pending_outbox(self, limit: int) -> Sequence[OutboxRow]: ...

    def delete_outbox(self, ids: Sequence[int]) -> None: ...


async def relay_outbox(store: Outbox, bus: Bus, limit: int = 1000) -> int:
    """Publish an outbox's pending events to the bus, then forget them (at least once:
    the bus drops a repeated message id)."""
    total = 0
    while True:
        pending = await asyncio.to_thread(store.pending_outbox, limit)
        if not pending:
            return total
        by_topic: dict[str, list[Message]] = {}
        for m in pending:
            by_topic.setdefault(m.topic, []).append(Message(m.message_id, m.key, m.payload))
        for topic, messages in by_topic.items():
            await bus.publish(topic, messages)
        await asyncio.to_thread(store.delete_outbox, [m.id for m in pending])
        total += len(pending)
        if len(pending) < limit:
            return total


class Worker:
    """Runs the profiles processor as a consumer group of the events topic."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        processor: ProfileProcessor,
        config: ProcessorConfig,
        group: str = PROFILES_GROUP,
        topic: str = EVENTS_TOPIC,
    ) -> None:
        self.bus = bus
        self.store = store
        self.processor = processor
        self.config = config
        self.group = group
        self.topic = topic
        self.stats = WorkerStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, idle_timeout: float = 0.25) -> None:
        log.info("worker.started", group=self.group, topic=self.topic)
        await self._relay()
        while not self._stop.is_set():
            try:
                await self.step(idle_timeout)
            except BusUnavailable as exc:
                log.warning("worker.bus_unavailable", error=str(exc))
                await self._sleep(1.0)
            except Exception as exc:  # a store outage: wait and try again, nothing acked
                log.error("worker.step_failed", error=describe(exc))
                await self._sleep(1.0)
        log.info("worker.stopped", **asdict(self.stats))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run_until_idle(self, timeout: float = 0.05) -> WorkerStats:
        """Process until nothing is left (tests, the demo, `tessera replay`)."""
        while await self.step(timeout):
            pass
        return self.stats

    async def step(self, timeout: float) -> int:
        """One batch. Returns how many deliveries it handled."""
        deliveries = await self.bus.fetch(self.topic, self.group, self.config.batch_size, timeout)
        if not deliveries:
            return 0
        events: list[Event] = []
        good: list[Delivery] = []
        for d in deliveries:
            try:
                events.append(decode(d.payload))
                good.append(d)
            except Exception as exc:
                await self._dead_letter(d, f"undecodable event: {describe(exc)}")
        try:
            await self._apply(events)
        except Exception as exc:
            if is_transient(exc):
                # the store is down, not the events: take them all again later, unharmed
                log.warning("worker.store_unavailable", error=describe(exc))
                await self.bus.nack(good, 1.0)
                raise
            log.warning("worker.batch_failed", size=len(events), error=describe(exc))
            await self._one_by_one(good, events)
            return len(deliveries)
        await self._relay()
        await self.bus.ack(good)
        return len(deliveries)

    async def _apply(self, events: Sequence[Event]) -> BatchResult:
        started = time.perf_counter()
        with tracing.batch_span(self.group, len(events)):
            result = await asyncio.to_thread(self.processor.apply, events)
        metrics.record_batch(self.group, result.applied, result.duplicates,
                             time.perf_counter() - started,
                             min((e.received_at for e in events), default=None))
        self.stats.batches += 1
        self.stats.applied += result.applied
        self.stats.duplicates += result.duplicates
        return result

    async def _one_by_one(self, deliveries: list[Delivery], events: list[Event]) -> None:
        for index, (delivery, event) in enumerate(zip(deliveries, events, strict=True)):
            try:
                await self._apply([event])
            except Exception as exc:
                if is_transient(exc):
                    await self.bus.nack(deliveries[index:], 1.0)
                    raise
                error = describe(exc)
                if delivery.attempts >= self.config.max_attempts:
                    await self._relay()
                    await self._dead_letter(delivery, error)
                    continue
                # keep order: this one and everything after it come again later
                self.stats.retried += 1
                metrics.record_outcome(self.group, "retried")
                delay = self.config.retry_backoff_seconds * (2 ** (delivery.attempts - 1))
                log.warning(
                    "worker.event_failed",
                    event_id=event.id,
                    uid=event.uid,
                    attempts=delivery.attempts,
                    error=error,
                    retry_in=delay,
                )
                await self._relay()
                await self.bus.nack(deliveries[index:], delay)
                return
            await self._relay()
            await self.bus.ack([delivery])

    async def _relay(self) -> None:
        self.stats.relayed += await relay_outbox(self.store, self.bus)

    async def _dead_letter(self, delivery: Delivery, error: str) -> None:
        log.error(
            "worker.dead_lettered",
            message_id=delivery.id,
            seq=delivery.seq,
            attempts=delivery.attempts,
            error=error,
        )
        self.stats.dead_lettered += 1
        metrics.record_outcome(self.group, "dead_lettered")
        await self.bus.dead_letter(delivery, error)

