"""The journey state contract on PostgreSQL, plus what several engines on one schema need:
profile locks that make a second transaction wait, timers claimed by one
transaction only, no lost step counts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tessera.activation.state import migrations as pg_migrations
from tessera.journeys.state import (
    JourneyState,
    existing_journey_state,
    open_journey_state,
)
from tessera.journeys.state.postgres import HISTORY, MIGRATIONS, PostgresJourneyState
from tessera.store.postgres import parse_url
from tests.contract.journey_state_contract import JourneyStateContract, instance
from tests.contract.pg_schema import pg_url

__all__ = ["pg_url"]

pytestmark = pytest.mark.services


class TestPostgresJourneyState(JourneyStateContract):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url: str) -> None:
        self.url = pg_url

    def make_state(self, tmp_path: Path) -> JourneyState:
        return PostgresJourneyState(self.url)

    def test_a_postgres_store_url_puts_it_in_that_schema(self, tmp_path: Path) -> None:
        state = existing_journey_state(self.url, tmp_path)
        assert isinstance(state, PostgresJourneyState)
        state.migrate()
        state.close()
        assert not (tmp_path / "activation.db").exists()
        conninfo, settings = parse_url(self.url, {})
        assert pg_migrations.applied(conninfo, settings.schema, HISTORY) == [
            m.version for m in MIGRATIONS]

    def test_a_profile_lock_makes_a_second_transaction_wait(
            self, state: JourneyState, tmp_path: Path) -> None:
        other = open_journey_state(self.url, tmp_path)
        held = threading.Event()
        order: list[str] = []

        def first() -> None:
            with state.transaction() as tx:
                tx.lock(["p1"])
                held.set()
                time.sleep(0.3)
                tx.insert(instance("i1"))
                order.append("first committed")

        thread = threading.Thread(target=first)
        thread.start()
        assert held.wait(5)
        try:
            with other.transaction() as tx:
                assert not tx.try_lock("p1")  # without waiting
                assert tx.try_lock("p2")
            with other.transaction() as tx:
                tx.lock(["p2", "p1"])  # waits for the first transaction
                order.append("second has p1")
                assert [i.id for i in tx.active("cart", "p1")] == ["i1"]  # sees its commit
        finally:
            thread.join()
            other.close()
        assert order == ["first committed", "second has p1"]

    def test_open_transactions_claim_disjoint_timers(self, state: JourneyState,
                                                     tmp_path: Path) -> None:
        with state.transaction() as tx:
            for n in range(10):
                tx.set_timer(f"i{n}", "wait", float(n))
        other = open_journey_state(self.url, tmp_path)
        try:
            with state.transaction() as tx1:
                mine = tx1.claim_due(100.0, 4)
                with other.transaction() as tx2:
                    theirs = tx2.claim_due(100.0, 100)  # does not wait for tx1
            assert [t[0] for t in mine] == ["i0", "i1", "i2", "i3"]
            assert [t[0] for t in theirs] == [f"i{n}" for n in range(4, 10)]
        finally:
            other.close()

    def test_engines_firing_at_once_take_every_timer_exactly_once(
            self, state: JourneyState, tmp_path: Path) -> None:
        """The timer loop's pattern (claim, take the profile without waiting, take the
        timer) from four handles at once, while event transactions hold profiles."""
        timers = 400
        with state.transaction() as tx:
            for n in range(timers):
                tx.insert(instance(f"i{n}", profile=f"p{n % 40}", slot=f"i{n}"))
                tx.set_timer(f"i{n}", "wait", float(n))
        handles = [open_journey_state(self.url, tmp_path) for _ in range(4)]
        fired: list[list[str]] = [[] for _ in handles]
        stop = threading.Event()

        def fire(n: int) -> None:
            h = handles[n]
            while True:
                with h.transaction() as tx:
                    claimed = tx.claim_due(1e9, 25)
                    for iid, step, _ in claimed:
                        found = tx.get(iid)
                        assert found is not None
                        if tx.try_lock(found.profile_id) and tx.take_timer(iid, step):
                            fired[n].append(iid)
                            tx.count("cart", "wait", "completed")
                if not claimed and not h.due_timers(1e9, 1):
                    return

        def events() -> None:  # hold profiles the way event batches do
            k = 0
            while not stop.is_set():
                with state.transaction() as tx:
                    tx.lock([f"p{k % 40}", f"p{(k * 7) % 40}"])
                    time.sleep(0.002)
                k += 1

        busy = threading.Thread(target=events)
        busy.start()
        threads = [threading.Thread(target=fire, args=(n,)) for n in range(len(handles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        busy.join()
        for h in handles:
            h.close()
        every = [iid for one in fired for iid in one]
        assert sorted(every) == sorted(f"i{n}" for n in range(timers))  # each exactly once
        assert sum(1 for one in fired if one) >= 2  # the work was shared
        [m] = [m for m in state.metrics() if m.step == "wait"]
        assert m.completed == timers  # no count lost
