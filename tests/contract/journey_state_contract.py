"""The journey state contract, run unchanged by every backend's test module.

``make_state`` opens another handle on the same state each time it is called,
as another engine (another worker process) would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.journeys.state import Instance, JourneyState


def instance(iid: str, profile: str = "p1", journey: str = "cart", slot: str | None = None,
             step: str = "wait", entered_at: float = 1.0) -> Instance:
    return Instance(id=iid, journey=journey, profile_id=profile, slot=slot or profile,
                    step=step, entered_at=entered_at, updated_at=entered_at,
                    context={"trigger": {"type": "cart_updated", "data": {"v": "é€"}},
                             "seen": ["cart_updated"]})


class JourneyStateContract:
    def make_state(self, tmp_path: Path) -> JourneyState:
        raise NotImplementedError

    @pytest.fixture
    def state(self, tmp_path: Path) -> Iterator[JourneyState]:
        state = self.make_state(tmp_path)
        state.migrate()
        yield state
        state.close()

    def test_handled_events_are_remembered_only_when_committed(
            self, state: JourneyState) -> None:
        with state.transaction() as tx:
            assert not tx.applied("a")
            tx.mark_applied(["a", "a"])
        with pytest.raises(RuntimeError), state.transaction() as tx:
            tx.mark_applied(["b"])
            raise RuntimeError("rolled back")
        with state.transaction() as tx:
            assert tx.applied("a") and not tx.applied("b")
            tx.mark_applied(["a"])  # again: fine

    def test_instances_round_trip(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            assert tx.insert(instance("i1", entered_at=2.0))
            assert tx.insert(instance("i0", journey="welcome", entered_at=1.0))
        with state.transaction() as tx:
            got = tx.get("i1")
            assert got == instance("i1", entered_at=2.0)
            assert [i.id for i in tx.active("cart", "p1")] == ["i1"]
            assert tx.active("cart", "p2") == [] and tx.get("nope") is None
            assert got is not None
            got.step, got.waiting, got.updated_at = "remind", "timer", 5.0
            got.context["seen"].append("x.viewed")
            tx.save(got)
        assert [i.id for i in state.instances("p1")] == ["i0", "i1"]
        saved = state.instances("p1")[1]
        assert (saved.step, saved.waiting, saved.updated_at) == ("remind", "timer", 5.0)
        assert saved.context["seen"] == ["cart_updated", "x.viewed"]
        assert saved.context["trigger"]["data"]["v"] == "é€"

    def test_one_active_instance_per_slot(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            assert tx.insert(instance("i1"))
            assert not tx.insert(instance("i1"))  # the same instance
            assert not tx.insert(instance("i2"))  # the profile is active in the slot
            assert tx.insert(instance("i3", slot="i3"))  # reentry: a slot of its own
            assert tx.insert(instance("i4", profile="p2"))
        with state.transaction() as tx:
            first = tx.get("i1")
            assert first is not None
            first.status = "completed"
            tx.save(first)
            assert tx.insert(instance("i2"))  # the slot is free again
        assert sorted(i.id for i in state.instances("p1")) == ["i1", "i2", "i3"]

    def test_a_failed_insert_leaves_the_transaction_usable(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            assert tx.insert(instance("i1"))
        with state.transaction() as tx:
            assert not tx.insert(instance("i2"))
            tx.mark_applied(["e1"])
            tx.count("cart", "*", "entered")
        with state.transaction() as tx:
            assert tx.applied("e1")
        assert [(m.step, m.entered) for m in state.metrics()] == [("*", 1), ("wait", 0)]

    def test_timers(self, state: JourneyState) -> None:
        assert state.next_timer_at() is None
        with state.transaction() as tx:
            tx.set_timer("i1", "wait", 30.0)
            tx.set_timer("i2", "wait", 10.0)
            tx.set_timer("i3", "wait", 20.0)
            tx.set_timer("i3", "wait", 50.0)  # set again: moved
            tx.set_timer("i1", "later", 40.0)
        assert state.next_timer_at() == 10.0
        assert state.due_timers(35.0, 10) == [("i2", "wait", 10.0), ("i1", "wait", 30.0)]
        assert state.due_timers(35.0, 1) == [("i2", "wait", 10.0)]
        with state.transaction() as tx:
            assert tx.take_timer("i2", "wait")
            assert not tx.take_timer("i2", "wait")  # once
            tx.clear_timers("i1")
        assert state.due_timers(100.0, 10) == [("i3", "wait", 50.0)]

    def test_claimed_timers_are_due_ones_earliest_first(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            for n, at in enumerate([30.0, 10.0, 20.0, 90.0]):
                tx.set_timer(f"i{n}", "wait", at)
        with state.transaction() as tx:
            assert tx.claim_due(35.0, 2) == [("i1", "wait", 10.0), ("i2", "wait", 20.0)]
            assert tx.take_timer("i1", "wait")
        with state.transaction() as tx:
            assert tx.claim_due(35.0, 10) == [("i2", "wait", 20.0), ("i0", "wait", 30.0)]

    def test_profile_locks_within_one_transaction(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            tx.lock(["p2", "p1", "p2"])
            assert tx.try_lock("p1")  # held by this transaction already
            assert tx.try_lock("p3")
        with state.transaction() as tx:
            assert tx.try_lock("p1")  # released at the end of the last one

    def test_metrics_count_steps_and_waiting_instances(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            tx.count("cart", "*", "entered")
            tx.count("cart", "*", "entered")
            tx.count("cart", "wait", "entered")
            tx.count("cart", "*", "completed")
            tx.count("cart", "remind", "exited")
            tx.insert(instance("i1"))
            tx.insert(instance("i2", profile="p2", step="remind"))
        with pytest.raises(RuntimeError), state.transaction() as tx:
            tx.count("cart", "*", "entered")
            raise RuntimeError("rolled back")
        with pytest.raises(ValueError), state.transaction() as tx:
            tx.count("cart", "*", "left")
        got = {(m.journey, m.step): (m.entered, m.completed, m.exited, m.waiting)
               for m in state.metrics()}
        assert got == {("cart", "*"): (2, 1, 0, 0), ("cart", "wait"): (1, 0, 0, 1),
                       ("cart", "remind"): (0, 0, 1, 1)}
        assert [(m.journey, m.step) for m in state.metrics()] == sorted(got)

    def test_the_outbox_in_order(self, state: JourneyState) -> None:
        with state.transaction() as tx:
            tx.add_outbox("derived", "m1", "p1", b'{"n":1}')
            tx.add_outbox("derived", "m2", "p2", b'{"n":2}')
            tx.add_outbox("events", "m3", "p1", b'\x00\xff')
        pending = state.pending_outbox(10)
        assert [(m.topic, m.msg_id, m.key, m.payload) for m in pending] == [
            ("derived", "m1", "p1", b'{"n":1}'), ("derived", "m2", "p2", b'{"n":2}'),
            ("events", "m3", "p1", b'\x00\xff')]
        assert [m.msg_id for m in state.pending_outbox(1)] == ["m1"]
        state.delete_outbox([pending[0].id, pending[2].id])
        assert [m.msg_id for m in state.pending_outbox(10)] == ["m2"]

    def test_erase_removes_instances_timers_and_queued_events(
            self, state: JourneyState) -> None:
        with state.transaction() as tx:
            tx.insert(instance("i1", profile="p1"))
            tx.insert(instance("i2", profile="p1", journey="welcome"))
            tx.insert(instance("i3", profile="p2"))
            tx.set_timer("i1", "wait", 10.0)
            tx.set_timer("i3", "wait", 10.0)
            tx.add_outbox("derived", "m1", "p1", b'{"who":"p1"}')
            tx.add_outbox("derived", "m2", "p2", b'{"who":"p2"}')
        removed = state.erase(["p1"], lambda payload: b'"p1"' in payload)
        assert removed == 3  # two instances, one queued event
        assert state.instances("p1") == []
        assert [i.id for i in state.instances("p2")] == ["i3"]
        assert state.due_timers(100.0, 10) == [("i3", "wait", 10.0)]
        assert [m.msg_id for m in state.pending_outbox(10)] == ["m2"]

    def test_another_handle_sees_what_one_committed(self, state: JourneyState,
                                                   tmp_path: Path) -> None:
        other = self.make_state(tmp_path)
        try:
            with state.transaction() as tx:
                tx.insert(instance("i1"))
                tx.set_timer("i1", "wait", 10.0)
                tx.mark_applied(["e1"])
            assert [i.id for i in other.instances("p1")] == ["i1"]
            with other.transaction() as tx:
                assert tx.applied("e1")
                assert tx.claim_due(10.0, 5) == [("i1", "wait", 10.0)]
                assert tx.take_timer("i1", "wait")
            assert state.due_timers(10.0, 5) == []
        finally:
            other.close()
