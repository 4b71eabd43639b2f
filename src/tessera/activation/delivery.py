"""The delivery runner of one subscription: consumer group ``sub:<name>``.

For each topic it fetches messages while fewer than ``max_in_flight`` are in
flight, filters and shapes them, and queues each one in the *lane* of its
profile. A lane delivers one message at a time, so event N+1 of a profile is
never delivered before event N has been delivered or dead-lettered; lanes of
different profiles run concurrently, up to the destination's
``max_concurrency`` and ``rate_per_second``. A failed attempt is retried in
its lane with exponential backoff and jitter until the retry budget is spent,
then the message goes to the dead letters with the last error. Acknowledgements
are batched. Nothing a runner does waits on another subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from tessera.activation.destinations import DeliveryFailed, Outgoing, Sender, encode
from tessera.activation.expr import context, holds, matches_envelope, profile_snapshot
from tessera.activation.model import Limits, RetryPolicy, Shape, SubscriptionConfig
from tessera.activation.shapes import shape
from tessera.activation.state import ActivationState
from tessera.bus.base import Bus, BusUnavailable, Delivery
from tessera.catalog.resolver import ResolveError, Resolver
from tessera.events.envelope import Event
from tessera.privacy.consent import has_consent
from tessera.processing.profiles import decode
from tessera.store.base import Store

log = structlog.get_logger("tessera.activation")


def group_name(subscription: str) -> str:
    return f"sub:{subscription}"


def message_id(subscription: str, event_uid: str) -> str:
    """``webhook-id``: one per (subscription, event), the same on every retry."""
    return "msg_" + hashlib.blake2b(f"{subscription}\x1f{event_uid}".encode(),
                                    digest_size=12).hexdigest()


def backoff(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """The wait after the ``attempts``-th failed attempt."""
    wait = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (attempts - 1))
    return wait * (1.0 - policy.jitter * rng.random())


class Limiter:
    """Concurrency (a semaphore) and rate (a token bucket) of one destination."""

    def __init__(self, limits: Limits) -> None:
        self.semaphore = asyncio.Semaphore(limits.max_concurrency)
        self.rate = limits.rate_per_second
        self.tokens = float(self.rate or 0.0)
        self.updated = time.monotonic()

    async def __aenter__(self) -> None:
        await self.semaphore.acquire()
        try:
            while self.rate is not None:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    break
                await asyncio.sleep((1.0 - self.tokens) / self.rate)
        except BaseException:
            self.semaphore.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.semaphore.release()


class Profiles:
    """Profile snapshots for deliveries: after the profiles processor applied the event."""

    def __init__(self, store: Store, wait_seconds: float = 10.0) -> None:
        self.store = store
        self.wait_seconds = wait_seconds

    async def wait_applied(self, uids: Sequence[str]) -> None:
        """Until the profiles processor has applied these events (or ``wait_seconds`` pass)."""
        remaining = set(uids)
        deadline = time.monotonic() + self.wait_seconds
        while remaining:
            remaining -= await asyncio.to_thread(self._applied, sorted(remaining))
            if not remaining or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.01)

    def _applied(self, uids: list[str]) -> set[str]:
        return self.store.applied(uids)  # a plain read: never holds up the processor

    def profile_id(self, event: Event) -> str | None:
        for type_, value in event.identifiers:
            found = self.store.resolve(value if type_ == "profile_id" else f"{type_}:{value}")
            if found:
                return found
        return None

    async def snapshots(
        self, topic: str, events: Sequence[Event]
    ) -> dict[str, dict[str, Any] | None]:
        """Each event's profile snapshot, after the profiles processor applied the events
        of ``topic`` ``events`` (or ``wait_seconds`` passed). The check and the read are one
        thread hop when the events are applied already, as they are once the processor
        keeps up; otherwise the check is repeated every 10 ms."""
        remaining = {e.uid for e in events} if topic == "events" else set()
        deadline = time.monotonic() + self.wait_seconds

        def read() -> dict[str, dict[str, Any] | None] | None:
            if remaining:
                remaining.difference_update(self._applied(sorted(remaining)))
                if remaining and time.monotonic() < deadline:
                    return None  # not applied yet: look again
            out: dict[str, dict[str, Any] | None] = {}
            cache: dict[str, dict[str, Any] | None] = {}
            for event in events:
                pid = self.profile_id(event)
                if pid is None:
                    out[event.uid] = None
                    continue
                if pid not in cache:
                    cache[pid] = profile_snapshot(self.store.get_profile(pid))
                out[event.uid] = cache[pid]
            return out

        while True:
            found = await asyncio.to_thread(read)
            if found is not None:
                return found
            await asyncio.sleep(0.01)


@dataclass(slots=True)
class Item:
    topic: str
    delivery: Delivery
    message: Outgoing
    attempts: int = 0
    first_attempt_at: float | None = None


@dataclass(slots=True)
class RunnerStats:
    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    filtered_out: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    latencies: list[float] = field(default_factory=list)


class SubscriptionRunner:
    def __init__(
        self,
        subscription: SubscriptionConfig,
        *,
        bus: Bus,
        profiles: Profiles,
        state: ActivationState,
        sender: Sender,
        limiter: Limiter,
        max_in_flight: int = 1000,
        batch_size: int = 200,
        rng: random.Random | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.sub = subscription
        self.resolver = resolver
        self.name = subscription.name
        self.group = group_name(subscription.name)
        self.bus = bus
        self.profiles = profiles
        self.state = state
        self.sender = sender
        self.limiter = limiter
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.rng = rng or random.Random()
        self.needs_profile = subscription.needs_profile()
        # the expression context (the CloudEvent, uid and profile) serves a condition or a
        # projection or template shape only
        self.needs_context = (subscription.filter.condition is not None
                              or isinstance(subscription.shape, Shape))
        # whether an event passes the filter's types and sources depends on these three
        # attributes only (when no other attribute is filtered): remembered per triple
        self._envelope_known: dict[tuple[str, str, str], bool] | None = (
            None if subscription.filter.attributes else {})
        self.paused = False
        self.lanes: dict[str, deque[Item]] = {}
        self.lane_tasks: dict[str, asyncio.Task[None]] = {}
        self.in_flight: set[tuple[str, str]] = set()
        self.acks: list[Delivery] = []
        self.stats = RunnerStats()
        self.totals = RunnerStats()
        self._stop = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    # -- lifecycle ------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        log.info("subscription.started", subscription=self.name, group=self.group)
        loops = [asyncio.create_task(self._fetch_loop(t)) for t in self.sub.topics]
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._stop.wait()
        finally:
            for task in loops:
                task.cancel()
            for task in list(self.lane_tasks.values()):
                task.cancel()  # not acknowledged: delivered again after a restart
            await asyncio.gather(*loops, *self.lane_tasks.values(), return_exceptions=True)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()
            log.info("subscription.stopped", subscription=self.name)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- consuming ------------------------------------------------------------

    async def _fetch_loop(self, topic: str) -> None:
        while not self._stop.is_set():
            if self.paused:
                await self._sleep(0.1)
                continue
            room = self.max_in_flight - len(self.in_flight)
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.5)
                continue
            try:
                deliveries = await self.bus.fetch(topic, self.group,
                                                  min(self.batch_size, room), 0.25)
            except BusUnavailable as exc:
                log.warning("subscription.bus_unavailable", subscription=self.name,
                            error=str(exc))
                await self._sleep(1.0)
                continue
            fresh = [d for d in deliveries if (topic, d.id) not in self.in_flight]
            if deliveries and not fresh:
                await self._sleep(0.05)  # only redeliveries of what is in flight
                continue
            if fresh:
                try:
                    await self._admit(topic, fresh)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down: these come again later
                    log.error("subscription.admit_failed", subscription=self.name,
                              error=f"{type(exc).__name__}: {exc}")
                    await self.bus.nack(fresh, 1.0)
                    await self._sleep(1.0)

    async def _fatten(self, event: Event) -> Event:
        """A notification event with the entity fetched from its owner (claim check),
        when the catalog declares a resolver for its type; other events unchanged."""
        assert self.resolver is not None
        fat = await self.resolver.fatten(event.to_cloudevent())
        if fat.get("data") is event.data:
            return event
        return dataclasses.replace(event, data=fat["data"])

    async def _admit(self, topic: str, deliveries: list[Delivery]) -> None:
        candidates: list[tuple[Delivery, Event]] = []
        for d in deliveries:
            try:
                event = decode(d.payload)
            except Exception as exc:
                await self.bus.dead_letter(d, f"undecodable event: {type(exc).__name__}: {exc}")
                self.stats.dead_lettered += 1
                continue
            if self._matches_envelope(event):
                if self.resolver is not None and self.sub.shape == "fat":
                    try:
                        event = await self._fatten(event)
                    except ResolveError as exc:
                        await self.bus.dead_letter(d, f"claim check failed: {exc}")
                        self.stats.dead_lettered += 1
                        continue
                candidates.append((d, event))
            else:
                self.acks.append(d)
                self.stats.filtered_out += 1
        if not candidates:
            return
        snapshots: dict[str, dict[str, Any] | None] = {}
        if self.needs_profile:
            snapshots = await self.profiles.snapshots(topic, [e for _, e in candidates])
        condition = self.sub.filter.condition
        for d, event in candidates:
            snap = snapshots.get(event.uid)
            pid = snap["id"] if snap else _derived_profile_id(event)
            cloudevent = event.to_cloudevent()  # once: the context and the body start from it
            ctx = context(event, snap, cloudevent) if self.needs_context else None
            if condition is not None and ctx is not None and not holds(condition, ctx):
                self.acks.append(d)
                self.stats.filtered_out += 1
                continue
            if self.sub.purpose is not None and not _consents(self.sub.purpose, event, snap):
                self.acks.append(d)  # no consent for this purpose: never delivered
                self.stats.filtered_out += 1
                continue
            body = shape(self.name, self.sub.shape, event, snap, ctx, pid, cloudevent)
            item = Item(topic, d, Outgoing(message_id(self.name, event.uid), body, encode(body),
                                           pid))
            self._enqueue(pid or d.key, item)

    def _matches_envelope(self, event: Event) -> bool:
        known = self._envelope_known
        if known is None:
            return matches_envelope(self.sub.filter, event)
        key = (event.type, event.source_name, event.source)
        found = known.get(key)
        if found is None:
            if len(known) >= 10_000:
                known.clear()
            found = known[key] = matches_envelope(self.sub.filter, event)
        return found

    def _enqueue(self, lane_key: str, item: Item) -> None:
        self.in_flight.add((item.topic, item.delivery.id))
        lane = self.lanes.setdefault(lane_key, deque())
        lane.append(item)
        if lane_key not in self.lane_tasks:
            self.lane_tasks[lane_key] = asyncio.create_task(self._lane(lane_key, lane))

    async def _lane(self, key: str, lane: deque[Item]) -> None:
        try:
            while lane and not self._stop.is_set():
                item = lane[0]
                try:
                    await self._deliver(item)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the bus refused the dead letter, say: try again
                    log.error("subscription.lane_failed", subscription=self.name,
                              error=f"{type(exc).__name__}: {exc}")
                    await self._sleep(1.0)
                    continue
                lane.popleft()
                self.in_flight.discard((item.topic, item.delivery.id))
                self._room.set()
        finally:
            self.lanes.pop(key, None)
            self.lane_tasks.pop(key, None)

    async def _deliver(self, item: Item) -> None:
        """Until delivered or dead-lettered; retries wait in this lane only."""
        policy = self.sub.retry
        while True:
            while self.paused and not self._stop.is_set():
                await self._sleep(0.1)
            if self._stop.is_set():
                raise asyncio.CancelledError
            item.attempts += 1
            if item.first_attempt_at is None:
                item.first_attempt_at = time.time()
            failure: DeliveryFailed | None = None
            try:
                async with self.limiter:
                    await self.sender.send(item.message)
            except DeliveryFailed as exc:
                failure = exc
            if failure is None:
                self.stats.delivered += 1
                self.stats.last_success_at = time.time()
                self.acks.append(item.delivery)
                return
            self.stats.failed_attempts += 1
            self.stats.last_error = failure.error
            self.stats.last_error_at = time.time()
            wait = failure.retry_after or backoff(policy, item.attempts, self.rng)
            out_of_budget = (
                not failure.retryable
                or item.attempts >= policy.max_attempts
                or time.time() + wait - item.first_attempt_at > policy.max_elapsed
            )
            if out_of_budget:
                error = f"{failure.error} (after {item.attempts} attempt(s))"
                await self.bus.dead_letter(item.delivery, error)
                self.stats.dead_lettered += 1
                log.warning("subscription.dead_lettered", subscription=self.name,
                            message_id=item.message.msg_id, error=error)
                return
            log.info("subscription.retry", subscription=self.name,
                     message_id=item.message.msg_id, attempts=item.attempts,
                     error=failure.error, retry_in=round(wait, 3))
            await self._sleep(wait)

    # -- acknowledgements and counters ------------------------------------------

    async def _flush_loop(self) -> None:
        last_stats = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            await self._flush_acks()
            if time.monotonic() - last_stats >= 0.5:
                last_stats = time.monotonic()
                await self._flush_stats()

    async def _flush_acks(self) -> None:
        if self.acks:
            acks, self.acks = self.acks, []
            try:
                await self.bus.ack(acks)
            except Exception:
                self.acks[:0] = acks
                raise

    async def _flush_stats(self) -> None:
        s = self.stats
        self.stats = RunnerStats()
        t = self.totals
        t.delivered += s.delivered
        t.failed_attempts += s.failed_attempts
        t.dead_lettered += s.dead_lettered
        t.filtered_out += s.filtered_out
        t.last_error = s.last_error or t.last_error
        t.last_error_at = s.last_error_at or t.last_error_at
        t.last_success_at = s.last_success_at or t.last_success_at
        await asyncio.to_thread(
            self.state.add_stats, self.name, s.delivered, s.failed_attempts, s.dead_lettered,
            s.filtered_out, len(self.in_flight), s.last_error, s.last_error_at,
            s.last_success_at)

    async def _flush(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush_acks()
        with contextlib.suppress(Exception):
            await self._flush_stats()

    def idle(self) -> bool:
        return not self.in_flight and not self.acks


def _consents(purpose: str, event: Event, snap: dict[str, Any] | None) -> bool:
    if event.type == "profile.erased":  # compliance notices reach every subscriber
        return True
    return snap is not None and has_consent(snap["traits"], purpose)


def _derived_profile_id(event: Event) -> str | None:
    for type_, value in event.identifiers:
        if type_ == "profile_id":
            return value
    if isinstance(event.data, dict) and isinstance(event.data.get("profile_id"), str):
        return str(event.data["profile_id"])
    return None
