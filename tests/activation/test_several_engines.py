"""Two journey engines on one PostgreSQL journey state, as two activation workers on two
hosts would run: an event both handle at once counts once, a timer both see fires
once. (Each engine is driven directly, so both really run at the same moment.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tessera.events.envelope import Event
from tessera.journeys.engine import JourneyEngine
from tessera.journeys.state import JourneyState, open_journey_state
from tessera.runtime import Runtime
from tests.activation.helpers import Harness, config_with
from tests.activation.test_journeys import cart_journey
from tests.contract.pg_schema import pg_url

__all__ = ["pg_url"]

pytestmark = pytest.mark.services

PEOPLE = 30


class Two:
    def __init__(self, h: Harness, engines: list[JourneyEngine], now: list[float]) -> None:
        self.h = h
        self.engines = engines
        self.now = now

    def metrics(self) -> dict[tuple[str, str], tuple[int, int, int, int]]:
        return {(m.journey, m.step): (m.entered, m.waiting, m.completed, m.exited)
                for m in self.engines[0].state.metrics()}

    async def processed(self, events: list[Event]) -> None:
        """Until the profiles processor has applied these events (engines need profiles)."""
        await self.engines[0].profiles.wait_applied([e.uid for e in events])


def at_once(*calls: Callable[[], object]) -> list[object]:
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(n: int) -> None:
        barrier.wait()
        results[n] = calls[n]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
async def two(tmp_path: Path, pg_url: str) -> AsyncIterator[Two]:
    cfg = config_with(journeys=[cart_journey("10s")])
    runtime = Runtime(cfg, tmp_path)
    await runtime.start()
    worker = runtime.worker()
    processing = asyncio.create_task(worker.run(idle_timeout=0.05))
    now = [1_000.0]
    states: list[JourneyState] = [open_journey_state(pg_url, tmp_path) for _ in range(2)]
    engines = [JourneyEngine(cfg.journeys, runtime.bus, runtime.store, s, clock=lambda: now[0])
               for s in states]
    try:
        yield Two(Harness(runtime, None), engines, now)  # type: ignore[arg-type]
    finally:
        worker.stop()
        await processing
        for s in states:
            s.close()
        await runtime.close()


async def test_an_event_both_engines_handle_at_once_changes_things_once(two: Two) -> None:
    carts = [await two.h.send({"email": f"p{n}@example.com", "value": n}, "cart_updated")
             for n in range(PEOPLE)]
    await two.processed(carts)
    await asyncio.to_thread(two.engines[0]._handle_events, carts)
    assert two.metrics()[("cart", "wait")][1] == PEOPLE  # all waiting
    checkouts = [await two.h.send({"email": f"p{n}@example.com"}, "checkout_completed")
                 for n in range(PEOPLE)]
    await two.processed(checkouts)
    # a redelivery reaching a second engine while the first still handles it
    await asyncio.to_thread(at_once, *(lambda e=e: e._handle_events(checkouts)
                                       for e in two.engines))
    m = two.metrics()
    assert m[("cart", "*")] == (PEOPLE, 0, 0, PEOPLE)  # each left once
    assert m[("cart", "wait")] == (PEOPLE, 0, 0, PEOPLE)
    assert two.engines[0].state.due_timers(1e12, 10) == []


async def test_a_timer_both_engines_see_fires_once(two: Two) -> None:
    carts = [await two.h.send({"email": f"p{n}@example.com", "value": n}, "cart_updated")
             for n in range(PEOPLE)]
    await two.processed(carts)
    await asyncio.to_thread(two.engines[1]._handle_events, carts)
    two.now[0] = 1_011.0  # every timer is due

    def fire_all(engine: JourneyEngine) -> int:
        total = 0
        while engine.state.due_timers(two.now[0], 1):
            total += engine._fire(two.now[0])
        return total

    fired = await asyncio.to_thread(at_once, *(lambda e=e: fire_all(e) for e in two.engines))
    assert sum(fired) == PEOPLE  # type: ignore[arg-type]
    reminders = [m for m in two.engines[0].state.pending_outbox(10 * PEOPLE)]
    assert len(reminders) == PEOPLE
    assert len({m.msg_id for m in reminders}) == PEOPLE
    m = two.metrics()
    assert m[("cart", "wait")] == (PEOPLE, 0, PEOPLE, 0)
    assert m[("cart", "*")] == (PEOPLE, 0, PEOPLE, 0)
