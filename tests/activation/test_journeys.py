"""Journeys: waits, conditions, actions, goals, metrics, and durable timers across restarts."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from tessera.events.envelope import Event
from tessera.journeys.state import SQLiteJourneyState
from tests.activation.helpers import Harness, config_with, running, wait_for

_groups = itertools.count()


async def emitted(h: Harness, type_: str) -> list[Event]:
    """Events of this type on the derived topic (read with a fresh consumer group)."""
    group = f"test-reader-{next(_groups)}"
    out: list[Event] = []
    for _ in range(1000):
        batch = await h.runtime.bus.fetch("derived", group, 500, 0.01)
        if not batch:
            break
        out += [Event.from_json(d.payload) for d in batch]
        await h.runtime.bus.ack(batch)
    return [e for e in out if e.type == type_]


async def wait_emitted(h: Harness, type_: str, count: int, timeout: float = 10.0) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        found = await emitted(h, type_)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def metrics(h: Harness) -> dict[tuple[str, str], dict[str, int]]:
    state = h.activation.journey_state
    return {(m.journey, m.step): {"entered": m.entered, "waiting": m.waiting,
                                  "completed": m.completed, "exited": m.exited}
            for m in state.metrics()}


def cart_journey(wait: str = "300ms", **extra: Any) -> dict[str, Any]:
    return {
        "name": "cart", "trigger": {"types": ["cart_updated"]},
        "exit_on": [{"types": ["checkout_completed"]}],
        "steps": [
            {"id": "wait", "wait": {"for": wait}},
            {"id": "remind", "action": {"emit": {"type": "x.reminder", "data": {
                "email": "{{ profile.identifiers.email.0 }}",
                "value": "{{ trigger.data.value }}"}}}},
        ],
        **extra,
    }


async def test_goal_event_exits_and_no_goal_runs_the_next_step(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey()])
    async with running(cfg, tmp_path) as h:
        await h.send({"email": "quick@example.com", "value": 10}, "cart_updated")
        await h.send({"email": "slow@example.com", "value": 42}, "cart_updated")
        await h.send({"email": "quick@example.com"}, "checkout_completed")
        reminders = await wait_emitted(h, "x.reminder", 1)
        await asyncio.sleep(0.5)
        reminders = await emitted(h, "x.reminder")
        m = metrics(h)
    assert [r.data for r in reminders] == [{"email": "slow@example.com", "value": 42}]
    assert reminders[0].extensions["tesserajourney"] == "cart"
    assert m[("cart", "*")] == {"entered": 2, "waiting": 0, "completed": 1, "exited": 1}
    assert m[("cart", "wait")] == {"entered": 2, "waiting": 0, "completed": 1, "exited": 1}
    assert m[("cart", "remind")]["completed"] == 1


async def test_timer_fires_within_a_second_of_its_time(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey("1s")])
    async with running(cfg, tmp_path) as h:
        await h.send({"email": "a@example.com"}, "cart_updated")
        await wait_for(lambda: metrics(h).get(("cart", "wait"), {}).get("waiting") == 1)
        entered = h.activation.journey_state.instances(
            h.runtime.store.resolve("email:a@example.com") or "")[0].entered_at
        reminders = await wait_emitted(h, "x.reminder", 1)
    assert len(reminders) == 1
    late = reminders[0].time - (entered + 1.0)
    assert 0.0 <= late < 1.0, late


async def test_a_durable_timer_survives_a_restart(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey("1500ms")])
    async with running(cfg, tmp_path) as h:
        await h.send({"email": "a@example.com"}, "cart_updated")
        await h.send({"email": "b@example.com"}, "cart_updated")
        await wait_for(lambda: metrics(h).get(("cart", "wait"), {}).get("waiting") == 2)
        pid = h.runtime.store.resolve("email:a@example.com") or ""
        due = h.activation.journey_state.instances(pid)[0].entered_at + 1.5
    # the process is gone; nothing fired
    assert time.time() < due
    await asyncio.sleep(0.3)
    async with running(cfg, tmp_path) as h:
        reminders = await wait_emitted(h, "x.reminder", 2, timeout=5)
        await asyncio.sleep(0.3)
        again = await emitted(h, "x.reminder")
    assert sorted(r.data["email"] for r in reminders) == ["a@example.com", "b@example.com"]
    assert all(0.0 <= r.time - due < 1.0 for r in reminders), [r.time - due for r in reminders]
    assert len(again) == 2  # once each


async def test_a_timer_due_while_down_fires_at_once_after_restart(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey("200ms")])
    async with running(cfg, tmp_path) as h:
        h.activation.engine.tick = 60.0  # type: ignore[union-attr]  # the timer loop sleeps
        await h.send({"email": "a@example.com"}, "cart_updated")
        await wait_for(lambda: metrics(h).get(("cart", "wait"), {}).get("waiting") == 1)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    restarted = time.time()
    async with running(cfg, tmp_path) as h:
        reminders = await wait_emitted(h, "x.reminder", 1, timeout=5)
    assert len(reminders) == 1 and reminders[0].time - restarted < 1.0


async def test_wait_until_an_event_or_a_timeout(tmp_path: Path) -> None:
    journey = {
        "name": "survey", "trigger": {"types": ["survey.sent"]},
        "steps": [
            {"id": "await-reply", "wait": {"until": {"types": ["survey.answered"]},
                                           "timeout": "400ms", "on_event": "thanks",
                                           "on_timeout": "nudge"}},
            {"id": "thanks", "action": {"emit": {"type": "x.thanks",
                                                 "data": {"score": "{{ event.data.score }}"}}}},
            {"id": "done", "exit": True},
            {"id": "nudge", "action": {"emit": {"type": "x.nudge", "data": {}}}},
        ],
    }
    async with running(config_with(journeys=[journey]), tmp_path) as h:
        await h.send({"email": "a@example.com"}, "survey.sent")
        await h.send({"email": "b@example.com"}, "survey.sent")
        await h.send({"email": "a@example.com", "score": 9}, "survey.answered")
        nudges = await wait_emitted(h, "x.nudge", 1)
        thanks = await emitted(h, "x.thanks")
    assert [t.data for t in thanks] == [{"score": 9}]
    assert len(nudges) == 1
    assert nudges[0].subject == h.runtime.store.resolve("email:b@example.com")


async def test_condition_on_traits_and_on_seen_events(tmp_path: Path) -> None:
    journey = {
        "name": "vip", "trigger": {"types": ["com.example.membership.joined"]},
        "steps": [
            {"id": "gold", "condition": {"if": {"path": "profile.traits.membership_tier",
                                                "eq": "gold"}, "else": "exit"}},
            {"id": "wait", "wait": {"for": "300ms"}},
            {"id": "browsed", "condition": {"if": {"path": "journey.seen",
                                                   "contains": "com.example.web.page_viewed"},
                                            "then": "upsell", "else": "welcome"}},
            {"id": "welcome", "action": {"emit": {"type": "x.welcome", "data": {}}}},
            {"id": "end", "exit": True},
            {"id": "upsell", "action": {"emit": {"type": "x.upsell", "data": {}}}},
        ],
    }
    cfg = config_with(journeys=[journey, {"name": "browse", "trigger": {
        "types": ["com.example.web.page_viewed"]}, "steps": [{"id": "end", "exit": True}]}])
    async with running(cfg, tmp_path) as h:
        await h.send({"member_number": "M-1", "tier": "gold"}, "com.example.membership.joined",
                     "membership")
        await h.send({"member_number": "M-2", "tier": "gold"}, "com.example.membership.joined",
                     "membership")
        await h.send({"member_number": "M-3", "tier": "basic"}, "com.example.membership.joined",
                     "membership")
        await h.send({"member_number": "M-2"}, "com.example.web.page_viewed")
        upsells = await wait_emitted(h, "x.upsell", 1)
        welcomes = await wait_emitted(h, "x.welcome", 1)
        m = metrics(h)
    store = h.runtime.store
    assert [u.subject for u in upsells] == [store.resolve("member_number:M-2")]
    assert [w.subject for w in welcomes] == [store.resolve("member_number:M-1")]
    assert m[("vip", "*")]["entered"] == 3 and m[("vip", "*")]["completed"] == 3
    assert m[("vip", "gold")]["entered"] == 3 and m[("vip", "wait")]["entered"] == 2


async def test_at_most_once_at_a_time_unless_reentry(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey("60s"),
                                {**cart_journey("60s"), "name": "cart-again", "reentry": True}])
    async with running(cfg, tmp_path) as h:
        for _ in range(3):
            await h.send({"email": "a@example.com"}, "cart_updated")
        await wait_for(lambda: metrics(h).get(("cart-again", "*"), {}).get("entered") == 3)
        m = metrics(h)
    assert m[("cart", "*")]["entered"] == 1
    assert m[("cart", "wait")]["waiting"] == 1
    assert m[("cart-again", "wait")]["waiting"] == 3


async def test_a_redelivered_event_changes_nothing(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey("50ms", reentry=True)])
    async with running(cfg, tmp_path) as h:
        await h.send({"email": "a@example.com"}, "cart_updated")
        assert len(await wait_emitted(h, "x.reminder", 1)) == 1
        for topic in ("events", "derived"):  # the whole log again
            await h.runtime.bus.reset(topic, "journeys", 0.0)
        await asyncio.sleep(0.5)
        m = metrics(h)
        reminders = await emitted(h, "x.reminder")
    assert m[("cart", "*")]["entered"] == 1
    assert len(reminders) == 1


async def test_state_file_is_the_activation_db(tmp_path: Path) -> None:
    cfg = config_with(journeys=[cart_journey()])
    async with running(cfg, tmp_path) as h:
        await h.send({"email": "a@example.com"}, "cart_updated")
        await wait_for(lambda: metrics(h).get(("cart", "wait"), {}).get("waiting") == 1)
    state = SQLiteJourneyState(tmp_path / "activation.db")
    assert any(m.journey == "cart" and m.waiting == 1 for m in state.metrics())
    state.close()


async def test_a_timer_never_fires_ahead_of_events_accepted_before_it_came_due(
    tmp_path: Path,
) -> None:
    """An engine running behind must not remind a customer whose checkout is already
    accepted but not yet read: the timer waits for the engine's watermark."""
    from tessera.journeys.engine import JourneyEngine
    from tessera.runtime import Runtime

    cfg = config_with(journeys=[cart_journey("10s")])
    runtime = Runtime(cfg, tmp_path)
    await runtime.start()
    worker = runtime.worker()
    processing = asyncio.create_task(worker.run(idle_timeout=0.05))
    now = [1_000.0]
    state = SQLiteJourneyState(tmp_path / "journeys.db")
    engine = JourneyEngine(cfg.journeys, runtime.bus, runtime.store, state, clock=lambda: now[0])
    h = Harness(runtime, None)  # type: ignore[arg-type]
    try:
        await h.send({"email": "paid@example.com", "value": 1}, "cart_updated")
        await h.send({"email": "gone@example.com", "value": 2}, "cart_updated")
        await engine.run_until_idle()  # both enter; their timers are due at 1,010
        await h.send({"email": "paid@example.com"}, "checkout_completed")  # not read yet
        now[0] = 1_011.0
        assert await engine.fire_due() == 0  # due, but the engine has read only up to 1,000
        await engine.run_until_idle()  # reads the checkout, then fires what is due
        reminders = await emitted(h, "x.reminder")
    finally:
        worker.stop()
        await processing
        await runtime.close()
    assert [r.data["email"] for r in reminders] == ["gone@example.com"]
    assert engine.watermark() == 1_011.0


async def test_a_trigger_read_after_a_later_goal_enters_nothing(tmp_path: Path) -> None:
    """Out of order: the checkout (later by event time) is read before the cart update it
    completes, so the cart is not abandoned; a cart after that checkout still counts."""
    cfg = config_with(journeys=[cart_journey("300ms")])
    async with running(cfg, tmp_path) as h:
        t = time.time() - 600
        checkout = h.event({"email": "ooo@example.com"}, "checkout_completed")  # read first
        cart = h.event({"email": "ooo@example.com", "value": 1}, "cart_updated")
        checkout.time, cart.time = t + 100, t
        await h.publish(checkout)
        await wait_for(lambda: h.runtime.store.resolve("email:ooo@example.com") is not None)
        await h.publish(cart)
        await wait_for(lambda: h.activation.engine is not None
                       and h.activation.engine.stats.goal_already_reached == 1,
                       what="the late cart update to be recognised")
        later = h.event({"email": "ooo@example.com", "value": 2}, "cart_updated")
        later.time = t + 200
        await h.publish(later)
        reminders = await wait_emitted(h, "x.reminder", 1)
        await asyncio.sleep(0.5)
        reminders = await emitted(h, "x.reminder")
    assert [r.data["value"] for r in reminders] == [2]
