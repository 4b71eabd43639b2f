"""The journey engine: consumer group ``journeys`` of the topics ``events`` and ``derived``,
and a timer loop.

For every event of a profile it (1) leaves the journeys whose goal the event
matches, (2) wakes instances waiting for such an event, (3) enters the
profile into journeys the event triggers (at most one active instance per
profile and journey, unless ``reentry``). Steps then run until the next wait:
a ``wait`` sets a durable timer, a ``condition`` picks the next step, an
``action`` queues an event (``emit``: any type; ``call``: the type
``tessera.journey.action``, which an implicit subscription delivers to the
destination with retries and dead letters), ``exit`` completes the journey.

The timer loop looks for due timers every ``tick`` seconds (0.1 by default)
and fires them in their own transaction, so a timer fires on time even after
a restart (one that came due while the engine was down fires at once).

Several engines may share one state (PostgreSQL): an event batch first takes
its profiles (:meth:`~tessera.journeys.state.JourneyTx.lock`), and the timer
loop claims timers no other engine holds and fires only those whose profile
it can take without waiting, so transitions of one instance never interleave
and no timer fires twice (see :mod:`tessera.journeys.state.base`).

Events arrive out of order (several systems, several requests in flight, a
mobile app that sends late): a trigger read after a goal event that happened
later (by event time) enters nothing, since the goal is already reached. The
profile's latest :data:`GOAL_LOOKBACK` events on its timeline are checked.

A timer never fires ahead of the events: one due at T waits until the engine
has read every message the bus held at T, on both topics (its *watermark*).
Otherwise an engine running behind (after a restart, under a burst) would
send the abandoned-cart reminder for a cart whose checkout is already
accepted but not yet read. When the engine keeps up, the watermark trails the
clock by at most one fetch (0.25 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from tessera.activation.delivery import Profiles
from tessera.activation.expr import (
    context,
    holds,
    matches,
    matches_envelope,
    profile_snapshot,
    render,
)
from tessera.activation.model import Filter, SubscriptionConfig
from tessera.bus.base import Bus, BusUnavailable, Delivery
from tessera.events import DERIVED_TOPIC, EVENTS_TOPIC
from tessera.events.envelope import Event
from tessera.journeys.model import END, JourneyConfig, Step
from tessera.journeys.state import Instance, JourneyState, JourneyTx
from tessera.processing.profiles import decode
from tessera.processing.worker import relay_outbox
from tessera.store.base import Store, TimelineEntry

log = structlog.get_logger("tessera.journeys")

GROUP = "journeys"
TOPICS = (EVENTS_TOPIC, DERIVED_TOPIC)
SOURCE = "tessera/journeys"
ACTION_TYPE = "tessera.journey.action"
MAX_TRANSITIONS = 100
"""Steps one event or timer may run through (a condition looping back stops here)."""
MAX_SEEN = 200
GOAL_LOOKBACK = 50
"""Latest timeline events looked at for a goal that happened after a trigger."""
_CE_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "time", "subject",
                            "datacontenttype", "dataschema", "data", "tesserasource",
                            "tesserareceivedat"})


def _timeline_event(entry: TimelineEntry) -> Event:
    """The envelope of an event as the profile's timeline keeps it (a CloudEvent)."""
    ce = entry.event
    return Event(
        id=str(ce.get("id", "")), source=str(ce.get("source", "")), type=entry.type,
        time=entry.time, received_at=entry.received_at,
        source_name=str(ce.get("tesserasource", "")), data=ce.get("data"),
        subject=ce.get("subject"), datacontenttype=ce.get("datacontenttype"),
        dataschema=ce.get("dataschema"),
        extensions={k: v for k, v in ce.items() if k not in _CE_ATTRIBUTES},
        uid=entry.event_uid)


def action_subscription(journey: JourneyConfig, step: Step) -> SubscriptionConfig:
    """The implicit subscription that delivers a ``call`` action's messages."""
    assert step.action is not None and step.action.call is not None
    call = step.action.call
    return SubscriptionConfig(
        name=f"journey.{journey.name}.{step.id}",
        filter=Filter(types=[ACTION_TYPE],
                      attributes={"tesserajourney": journey.name, "tesserastep": step.id}),
        shape="event",
        destination=call.destination,
        retry=call.retry,
        topics=["derived"],
        start="now",
    )


def action_subscriptions(journeys: Sequence[JourneyConfig]) -> list[SubscriptionConfig]:
    return [action_subscription(j, s) for j in journeys for s in j.steps
            if s.action is not None and s.action.call is not None]


@dataclass(slots=True)
class EngineStats:
    events: int = 0
    entered: int = 0
    goal_already_reached: int = 0
    """Triggers not entered: the profile reached the goal after them, read before them."""
    timers_fired: int = 0
    actions: int = 0


class JourneyEngine:
    def __init__(
        self,
        journeys: Sequence[JourneyConfig],
        bus: Bus,
        store: Store,
        state: JourneyState,
        profiles: Profiles | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 0.1,
        batch_size: int = 200,
    ) -> None:
        self.journeys = list(journeys)
        self.by_name = {j.name: j for j in self.journeys}
        self.bus = bus
        self.store = store
        self.state = state
        self.profiles = profiles or Profiles(store)
        self.clock = clock
        self.tick = tick
        self.batch_size = batch_size
        self.stats = EngineStats()
        self._filters: list[Filter] = []
        for j in self.journeys:
            self._filters += [j.trigger, *j.exit_on]
            self._filters += [s.wait.until for s in j.steps if s.wait and s.wait.until]
        self._stop = asyncio.Event()
        self._read_in_batch: set[str] = set()
        self._caught_up: dict[str, float] = {}
        """Per topic: when the latest fetch that emptied it (fewer than a batch) began."""

    # -- running ----------------------------------------------------------------

    def watermark(self) -> float:
        """Every message the bus held before this time has been handled, on every topic."""
        return min(self._caught_up.get(t, float("-inf")) for t in TOPICS)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if not self.journeys:
            return
        log.info("journeys.started", journeys=[j.name for j in self.journeys])
        await self.relay()
        tasks = [asyncio.create_task(self._consume(t)) for t in TOPICS]
        tasks.append(asyncio.create_task(self._timers()))
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _consume(self, topic: str) -> None:
        while not self._stop.is_set():
            try:
                await self.step(topic, 0.25)
            except BusUnavailable as exc:
                log.warning("journeys.bus_unavailable", error=str(exc))
                await self._sleep(1.0)
            except Exception as exc:  # nothing acknowledged: it comes again
                log.error("journeys.step_failed", topic=topic, error=f"{type(exc).__name__}: {exc}")
                await self._sleep(1.0)

    async def _timers(self) -> None:
        while not self._stop.is_set():
            try:
                await self.fire_due()
            except Exception as exc:
                log.error("journeys.timers_failed", error=f"{type(exc).__name__}: {exc}")
            await self._sleep(self.tick)

    async def run_until_idle(self) -> None:
        """Handle what is on the bus and what timers are due (tests, the demo)."""
        while True:
            n = 0
            for topic in TOPICS:
                n += await self.step(topic, 0.02)
            n += await self.fire_due()
            if not n:
                return

    # -- events -----------------------------------------------------------------

    async def step(self, topic: str, timeout: float) -> int:
        started = self.clock()
        deliveries = await self.bus.fetch(topic, GROUP, self.batch_size, timeout)
        if not deliveries:
            self._caught_up[topic] = started
            return 0
        relevant: list[tuple[Delivery, Event]] = []
        for d in deliveries:
            try:
                event = decode(d.payload)
            except Exception as exc:
                await self.bus.dead_letter(d, f"undecodable event: {type(exc).__name__}: {exc}")
                continue
            if any(matches_envelope(f, event) for f in self._filters):
                relevant.append((d, event))
        if relevant:
            events = [e for _, e in relevant]
            if topic == "events":
                await self.profiles.wait_applied([e.uid for e in events])
            await asyncio.to_thread(self._handle_events, events)
            await self.relay()
        await self.bus.ack(deliveries)
        if len(deliveries) < self.batch_size:
            self._caught_up[topic] = started
        return len(deliveries)

    def _handle_events(self, events: list[Event]) -> None:
        pids = [self.profiles.profile_id(e) for e in events]
        now = self.clock()
        with self.state.transaction() as tx:
            # another engine may hold events of these profiles: take them first (sorted)
            tx.lock([p for p in pids if p is not None])
            self._read_in_batch = set()
            for event, pid in zip(events, pids, strict=True):
                if pid is None or tx.applied(event.uid):
                    continue
                self.stats.events += 1
                for journey in self.journeys:
                    self._on_event(tx, journey, event, pid, now)
                self._read_in_batch.add(event.uid)
            tx.mark_applied([e.uid for e in events])

    def _snapshot(self, pid: str) -> dict[str, Any] | None:
        return profile_snapshot(self.store.get_profile(pid))

    def _on_event(self, tx: JourneyTx, journey: JourneyConfig, event: Event, pid: str,
                  now: float) -> None:
        snap: list[dict[str, Any] | None] = []

        def ctx() -> dict[str, Any]:
            if not snap:
                snap.append(self._snapshot(pid))
            return context(event, snap[0])

        active = tx.active(journey.name, pid)
        still_active = []
        for inst in active:
            seen = inst.context.setdefault("seen", [])
            seen.append(event.type)
            del seen[:-MAX_SEEN]
            inst.updated_at = now
            if any(matches(f, event, ctx) for f in journey.exit_on):
                self._leave(tx, journey, inst, "exited", now)
                continue
            step = journey.steps[journey.index(inst.step)]
            if (inst.waiting == "event" and step.wait is not None and step.wait.until is not None
                    and matches(step.wait.until, event, ctx)):
                tx.clear_timers(inst.id)
                tx.count(journey.name, step.id, "completed")
                inst.context["event"] = event.to_cloudevent()
                self._run(tx, journey, inst, self._target(journey, step, step.wait.on_event), now)
            else:
                tx.save(inst)
            if inst.status == "active":
                still_active.append(inst)
        if (journey.reentry or not still_active) and matches(journey.trigger, event, ctx):
            if self._goal_read_before(tx, journey, event, pid):
                self.stats.goal_already_reached += 1
                return
            self._enter(tx, journey, event, pid, now)

    def _goal_read_before(self, tx: JourneyTx, journey: JourneyConfig, trigger: Event,
                          pid: str) -> bool:
        """Whether a goal event of this profile happened at or after ``trigger`` (event
        time) but was read before it, so entering now would chase a goal already met.
        (A goal not read yet is no reason: it will be read next, and exit as usual.)"""
        if not journey.exit_on:
            return False
        for entry in self.store.timeline(pid, GOAL_LOOKBACK):
            if entry.time < trigger.time:
                return False  # newest first: the rest happened before the trigger
            if entry.event_uid == trigger.uid:
                continue
            if entry.event_uid not in self._read_in_batch and not tx.applied(entry.event_uid):
                continue
            goal = _timeline_event(entry)

            def goal_ctx(goal: Event = goal) -> dict[str, Any]:
                return context(goal, self._snapshot(pid))

            if any(matches(f, goal, goal_ctx) for f in journey.exit_on):
                return True
        return False

    def _enter(self, tx: JourneyTx, journey: JourneyConfig, event: Event, pid: str,
               now: float) -> None:
        iid = "jrn_" + hashlib.blake2b(f"{journey.name}\x1f{pid}\x1f{event.uid}".encode(),
                                       digest_size=12).hexdigest()
        inst = Instance(id=iid, journey=journey.name, profile_id=pid,
                        slot=iid if journey.reentry else pid, step=journey.steps[0].id,
                        entered_at=now, updated_at=now,
                        context={"trigger": event.to_cloudevent(), "seen": [event.type]})
        if not tx.insert(inst):
            return
        self.stats.entered += 1
        tx.count(journey.name, "*", "entered")
        self._run(tx, journey, inst, 0, now)

    @staticmethod
    def _target(journey: JourneyConfig, step: Step, target: str | None) -> int:
        if target is None:
            return journey.index(step.id) + 1
        if target == END:
            return len(journey.steps)
        return journey.index(target)

    # -- steps --------------------------------------------------------------------

    def _journey_ctx(self, inst: Instance, snapshot: dict[str, Any] | None) -> dict[str, Any]:
        trigger = inst.context.get("trigger") or {}
        ctx = dict(trigger)
        ctx.update({
            "profile": snapshot,
            "trigger": trigger,
            "event": inst.context.get("event"),
            "journey": {"name": inst.journey, "instance": inst.id, "step": inst.step,
                        "entered_at": inst.entered_at, "seen": inst.context.get("seen", [])},
        })
        return ctx

    def _run(self, tx: JourneyTx, journey: JourneyConfig, inst: Instance, index: int,
             now: float) -> None:
        snapshot: dict[str, Any] | None = None
        have_snapshot = False
        inst.waiting = None
        for _ in range(MAX_TRANSITIONS):
            if index >= len(journey.steps):
                self._leave(tx, journey, inst, "completed", now)
                return
            step = journey.steps[index]
            inst.step = step.id
            tx.count(journey.name, step.id, "entered")
            if step.wait is not None:
                delay = step.wait.for_ if step.wait.for_ is not None else step.wait.timeout
                assert delay is not None
                inst.waiting = "timer" if step.wait.for_ is not None else "event"
                tx.set_timer(inst.id, step.id, now + delay)
                tx.save(inst)
                return
            if step.exit:
                tx.count(journey.name, step.id, "completed")
                self._leave(tx, journey, inst, "completed", now)
                return
            if not have_snapshot:
                snapshot, have_snapshot = self._snapshot(inst.profile_id), True
            ctx = self._journey_ctx(inst, snapshot)
            if step.condition is not None:
                ok = holds(step.condition.if_, ctx)
                tx.count(journey.name, step.id, "completed")
                index = self._target(journey, step,
                                     step.condition.then if ok else step.condition.else_)
                continue
            assert step.action is not None
            self._act(tx, journey, inst, step, ctx, now)
            tx.count(journey.name, step.id, "completed")
            index += 1
        log.warning("journeys.too_many_transitions", journey=journey.name, instance=inst.id)
        self._leave(tx, journey, inst, "exited", now)

    def _act(self, tx: JourneyTx, journey: JourneyConfig, inst: Instance, step: Step,
             ctx: dict[str, Any], now: float) -> None:
        assert step.action is not None
        if step.action.emit is not None:
            type_, data = step.action.emit.type, render(step.action.emit.data, ctx)
        else:
            assert step.action.call is not None
            type_, data = ACTION_TYPE, render(step.action.call.data, ctx)
        event = Event(
            id=f"{inst.id}:{step.id}", source=SOURCE, type=type_, time=now, received_at=now,
            source_name="tessera", data=data, identifiers=[("profile_id", inst.profile_id)],
            subject=inst.profile_id, datacontenttype="application/json",
            extensions={"tesserajourney": journey.name, "tesserastep": step.id,
                        "tesserainstance": inst.id},
        )
        tx.add_outbox(DERIVED_TOPIC, event.uid, inst.profile_id, event.to_json())
        self.stats.actions += 1

    def _leave(self, tx: JourneyTx, journey: JourneyConfig, inst: Instance, how: str,
               now: float) -> None:
        tx.clear_timers(inst.id)
        if how == "exited":
            tx.count(journey.name, inst.step, "exited")
        tx.count(journey.name, "*", how)
        inst.status = how
        inst.waiting = None
        inst.updated_at = now
        tx.save(inst)

    # -- timers -------------------------------------------------------------------

    async def fire_due(self) -> int:
        until = min(self.clock(), self.watermark())
        if not await asyncio.to_thread(self.state.due_timers, until, 1):
            return 0  # a cheap look first: no write transaction on an idle tick
        fired = await asyncio.to_thread(self._fire, until)
        await self.relay()
        return fired

    def _fire(self, until: float) -> int:
        """Fire the timers due at ``until`` that this engine can take now. Several engines
        may run this at once: each takes timers no other holds, and only those whose
        profile no event transaction holds (the others fire on a later tick)."""
        fired = 0
        now = self.clock()
        with self.state.transaction() as tx:
            for instance_id, step_id, _ in tx.claim_due(until, 200):
                found = tx.get(instance_id)
                if found is not None and not tx.try_lock(found.profile_id):
                    continue
                if not tx.take_timer(instance_id, step_id):
                    continue
                inst = tx.get(instance_id)  # again, now that its profile is held
                journey = self.by_name.get(inst.journey) if inst else None
                if inst is None or journey is None or inst.status != "active":
                    continue
                if inst.step != step_id:
                    continue
                fired += 1
                self.stats.timers_fired += 1
                step = journey.steps[journey.index(step_id)]
                tx.count(journey.name, step_id, "completed")
                target = step.wait.on_timeout if step.wait is not None else None
                inst.updated_at = now
                self._run(tx, journey, inst, self._target(journey, step, target), now)
        return fired

    # -- outbox ---------------------------------------------------------------------

    async def relay(self) -> int:
        return await relay_outbox(self.state, self.bus, 500)
