"""The activation state contract, run unchanged by every backend's test module.

``make_state`` opens another handle on the same state each time it is called,
as another process (an API node, a worker, the CLI) would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.activation.model import SubscriptionConfig
from tessera.activation.state import ActivationState, SubscriptionExists


def sub(name: str, url: str = "http://127.0.0.1:9/hook", **extra: object) -> SubscriptionConfig:
    return SubscriptionConfig.model_validate({
        "name": name, "filter": {"types": ["x.*"]},
        "destination": {"type": "webhook", "url": url}, **extra})


class ActivationStateContract:
    def make_state(self, tmp_path: Path) -> ActivationState:
        raise NotImplementedError

    @pytest.fixture
    def state(self, tmp_path: Path) -> Iterator[ActivationState]:
        state = self.make_state(tmp_path)
        state.migrate()
        yield state
        state.close()

    def test_an_api_subscription_round_trips(self, state: ActivationState) -> None:
        created = state.create(sub("crm", start="beginning"), "api", True, 1_000.5)
        assert (created.name, created.origin, created.created_at) == ("crm", "api", 1_000.5)
        assert created.initialized and not created.paused and created.delivered == 0
        assert state.api_subscriptions() == [sub("crm", start="beginning")]
        got = state.get("crm")
        assert got is not None and got.definition == sub("crm", start="beginning").model_dump(
            mode="json", by_alias=True)
        assert [s.name for s in state.all()] == ["crm"]
        assert state.get("other") is None

    def test_a_name_is_taken_until_deleted_then_starts_afresh(
            self, state: ActivationState) -> None:
        state.create(sub("crm"), "api", True, 1.0)
        with pytest.raises(SubscriptionExists):
            state.create(sub("crm", url="http://127.0.0.1:9/other"))
        state.add_stats("crm", 5, 1, 1, 0, 2, "boom", 2.0, 3.0)
        state.set_paused("crm", True)
        assert state.delete("crm") is True
        assert state.delete("crm") is False
        assert state.get("crm") is None and state.all() == [] and state.paused() == set()
        again = state.create(sub("crm", url="http://127.0.0.1:9/other"), "api", False, 9.0)
        assert again.created_at == 9.0 and not again.initialized and not again.paused
        assert (again.delivered, again.failed_attempts, again.last_error) == (0, 0, None)
        assert again.definition is not None
        assert again.definition["destination"]["url"] == "http://127.0.0.1:9/other"

    def test_only_api_subscriptions_are_deleted(self, state: ActivationState) -> None:
        state.ensure(sub("from-config"), "config")
        assert state.delete("from-config") is False
        assert state.get("from-config") is not None
        assert state.api_subscriptions() == []

    def test_ensure_records_once_and_keeps_counters(self, state: ActivationState) -> None:
        first = state.ensure(sub("journey.cart.remind"), "journey")
        assert first.origin == "journey" and not first.initialized
        state.mark_initialized("journey.cart.remind")
        state.add_stats("journey.cart.remind", 3, 0, 0, 0, 0, None, None, 5.0)
        again = state.ensure(sub("journey.cart.remind", url="http://127.0.0.1:9/v2"), "journey")
        assert again.created_at == first.created_at and again.initialized
        assert again.delivered == 3 and again.last_success_at == 5.0
        assert again.definition is not None
        assert again.definition["destination"]["url"] == "http://127.0.0.1:9/v2"

    def test_pause_flags(self, state: ActivationState) -> None:
        assert state.set_paused("nobody", True) is False
        state.create(sub("a"), "api", True, 1.0)
        state.ensure(sub("b"), "config")
        assert state.set_paused("a", True) and state.set_paused("b", True)
        assert state.paused() == {"a", "b"}
        assert state.set_paused("a", False)
        assert state.paused() == {"b"}
        got = state.get("b")
        assert got is not None and got.paused

    def test_stats_add_up_and_keep_the_last_error(self, state: ActivationState) -> None:
        state.create(sub("s"), "api", True, 1.0)
        state.add_stats("s", 2, 1, 0, 4, 7, "timeout", 10.0, None)
        state.add_stats("s", 3, 0, 1, 0, 0, None, None, 11.0)
        got = state.get("s")
        assert got is not None
        assert (got.delivered, got.failed_attempts, got.dead_lettered, got.filtered_out,
                got.in_flight) == (5, 1, 1, 4, 0)
        assert (got.last_error, got.last_error_at, got.last_success_at) == ("timeout", 10.0, 11.0)

    def test_the_version_changes_when_api_subscriptions_come_and_go(
            self, state: ActivationState) -> None:
        v0 = state.version()
        state.create(sub("a"), "api", True, 1.0)
        v1 = state.version()
        state.ensure(sub("cfg"), "config")
        assert state.version() == v1  # not an API one
        state.delete("a")
        v2 = state.version()
        assert len({v0, v1, v2}) == 3

    def test_another_handle_sees_what_one_wrote(self, state: ActivationState,
                                                tmp_path: Path) -> None:
        other = self.make_state(tmp_path)
        try:
            state.create(sub("crm"), "api", True, 1.0)
            assert [s.name for s in other.api_subscriptions()] == ["crm"]
            other.set_paused("crm", True)
            assert state.paused() == {"crm"}
        finally:
            other.close()

    def test_counters_from_concurrent_writers_are_not_lost(self, state: ActivationState,
                                                          tmp_path: Path) -> None:
        state.create(sub("s"), "api", True, 1.0)
        handles = [self.make_state(tmp_path) for _ in range(3)]

        def add(h: ActivationState) -> None:
            for _ in range(50):
                h.add_stats("s", 1, 1, 0, 0, 0, None, None, None)

        threads = [threading.Thread(target=add, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in handles:
            h.close()
        got = state.get("s")
        assert got is not None and (got.delivered, got.failed_attempts) == (150, 150)

    def test_of_two_creators_of_one_name_exactly_one_wins(self, state: ActivationState,
                                                         tmp_path: Path) -> None:
        handles = [self.make_state(tmp_path) for _ in range(4)]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(handles))

        def create(h: ActivationState, n: int) -> None:
            barrier.wait()
            try:
                h.create(sub("race", url=f"http://127.0.0.1:9/{n}"), "api", True, float(n))
                outcomes.append(f"won {n}")
            except SubscriptionExists:
                outcomes.append("exists")

        threads = [threading.Thread(target=create, args=(h, n)) for n, h in enumerate(handles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in handles:
            h.close()
        won = [o for o in outcomes if o.startswith("won")]
        assert len(won) == 1 and outcomes.count("exists") == 3
        got = state.get("race")
        assert got is not None and got.created_at == float(won[0].split()[1])
