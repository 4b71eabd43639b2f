"""The personalization state contract, run unchanged by every backend's test module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.personalization.engine import Cause, Outcome, Personalizer
from tessera.personalization.state.base import OfferRecord, State


class StateContract:
    @pytest.fixture
    def state(self) -> Iterator[State]:
        raise NotImplementedError

    def test_applied_events_are_remembered_only_when_committed(self, state: State) -> None:
        with state.transaction() as tx:
            assert tx.applied(["a", "b"]) == set()
            tx.mark_applied(["a"], 1.0)
            tx.mark_applied(["a"], 2.0)  # twice is fine
        with pytest.raises(RuntimeError), state.transaction() as tx:
            tx.mark_applied(["b"], 1.0)
            raise RuntimeError("rolled back")
        with state.transaction() as tx:
            assert tx.applied(["a", "b", "c"]) == {"a"}

    def test_trait_states_round_trip_and_replace(self, state: State) -> None:
        with state.transaction() as tx:
            tx.put_trait_states("p1", {"tows": {"b": {"10": {"n": 2}}}, "spend": {"life": {}}})
            tx.put_trait_states("p1", {"tows": {"b": {"11": {"n": 1}}}})
        with state.transaction() as tx:
            got = tx.trait_states(["p1", "p2"])
        assert got == {"p1": {"tows": {"b": {"11": {"n": 1}}}, "spend": {"life": {}}}, "p2": {}}
        assert state.trait_states_of("p1")["tows"] == {"b": {"11": {"n": 1}}}

    def test_due_profiles_in_time_order(self, state: State) -> None:
        with state.transaction() as tx:
            tx.set_due("late", 300.0)
            tx.set_due("early", 100.0)
            tx.set_due("gone", 50.0)
            tx.set_due("gone", None)
            tx.set_due("moved", 10.0)
            tx.set_due("moved", 200.0)
        assert state.due(250.0, 10) == ["early", "moved"]
        assert state.due(250.0, 1) == ["early"]
        assert state.due(1000.0, 10) == ["early", "moved", "late"]

    def test_memberships_members_paged_and_sizes(self, state: State) -> None:
        with state.transaction() as tx:
            for i in range(5):
                tx.enter("vip", f"p{i}", float(i))
            tx.enter("vip", "p0", 99.0)  # already a member: keeps its time
            tx.enter("members", "p1", 7.0)
            tx.leave("vip", "p3")
        assert state.memberships_of("p1") == {"vip": 1.0, "members": 7.0}
        assert state.memberships_of("p0") == {"vip": 0.0}
        assert state.sizes() == {"vip": 4, "members": 1}
        first = state.members("vip", None, 2)
        assert first == [("p0", 0.0), ("p1", 1.0)]
        assert state.members("vip", first[-1][0], 10) == [("p2", 2.0), ("p4", 4.0)]
        with state.transaction() as tx:
            assert tx.memberships(["p1", "p9"]) == {"p1": {"vip": 1.0, "members": 7.0}, "p9": {}}

    def test_offers_dedupe_forget_and_move_with_a_merge(self, state: State) -> None:
        a = OfferRecord("p1", "e1", "upgrade", "email", "presented", 10.0)
        b = OfferRecord("p1", "e2", "upgrade", "email", "declined", 20.0)
        c = OfferRecord("p2", "e3", "insurance", "web", "presented", 15.0)
        with state.transaction() as tx:
            tx.add_offers([a, b, c, a])
            tx.put_trait_states("p2", {"x": {"life": {"n": 1}}})
            tx.set_due("p2", 5.0)
            tx.enter("vip", "p2", 1.0)
        assert state.offers_of("p1") == [a, b]
        with state.transaction() as tx:
            tx.move("p2", "p1")
        moved = OfferRecord("p1", "e3", "insurance", "web", "presented", 15.0)
        assert state.offers_of("p1") == [a, moved, b]
        assert state.offers_of("p2") == []
        assert state.trait_states_of("p2") == {}
        assert state.memberships_of("p2") == {}
        assert state.due(100.0, 10) == []
        with state.transaction() as tx:
            tx.forget_offers("p1", 16.0)
            assert tx.offers(["p1"]) == [b]

    def test_drop_profile_ids_and_reset(self, state: State) -> None:
        with state.transaction() as tx:
            tx.put_trait_states("p1", {"x": {}})
            tx.enter("vip", "p2", 1.0)
            tx.add_offers([OfferRecord("p3", "e", "a", "c", "presented", 1.0)])
            tx.set_due("p4", 1.0)
            tx.mark_applied(["e"], 1.0)
        assert state.profile_ids() == ["p1", "p2", "p3", "p4"]
        with state.transaction() as tx:
            tx.drop(["p1", "p2"])
        assert state.profile_ids() == ["p3", "p4"]
        state.reset()
        assert state.profile_ids() == []
        with state.transaction() as tx:
            assert tx.applied(["e"]) == set()

    def test_outbox_in_order_until_deleted(self, state: State) -> None:
        with state.transaction() as tx:
            tx.add_outbox([("derived", "m1", "k", b"one"), ("derived", "m2", "k", b"two")])
        with pytest.raises(RuntimeError), state.transaction() as tx:
            tx.add_outbox([("derived", "m3", "k", b"lost")])
            raise RuntimeError
        pending = state.pending_outbox(10)
        assert [(m.message_id, m.payload) for m in pending] == [("m1", b"one"), ("m2", b"two")]
        state.delete_outbox([pending[0].id])
        assert [m.message_id for m in state.pending_outbox(10)] == ["m2"]

    def test_compact_segment_rows_are_published_as_their_events(self, state: State) -> None:
        """A membership change is kept as a compact record, up to a thousand to an outbox
        row; the outbox gives the bus the events themselves, the same bytes the engine
        would have queued in full, in order with rows queued in full (as before the compact
        format), and forgets a row's events together."""
        from tessera.personalization.state.outbox import ENTERED, MARK, PACK, event_row

        def values(n: int) -> tuple[Any, ...]:
            return (ENTERED, "vip", f"p{n}", f"batch:1.5:p{n}", "batch", None, None, 2.25, None)

        result = Outcome()
        result.events = [Personalizer.segment_event(ENTERED, "vip", f"p{n}",
                                                    Cause(f"batch:1.5:p{n}", "batch"), 2.25)
                         for n in range(PACK + 2)]
        assert all(row[3].startswith(MARK) for row in result.events)
        assert len(result.events[0][3]) * 3 < len(event_row(*values(0))[3])
        with state.transaction() as tx:
            tx.add_outbox([("derived", "old", "k", b'{"old": true}')])
            Personalizer.queue(tx, result)
            tx.add_outbox([("derived", "new", "k", b"two")])
        pending = state.pending_outbox(2000)
        assert [(m.topic, m.message_id, m.key, m.payload) for m in pending] == [
            ("derived", "old", "k", b'{"old": true}'),
            *(event_row(*values(n)) for n in range(PACK + 2)),
            ("derived", "new", "k", b"two")]
        ids = [m.id for m in pending]
        assert len(set(ids)) == 4  # the events in two rows of compact records
        assert ids[1] == ids[PACK] != ids[PACK + 1] == ids[PACK + 2]
        # a row's events are not split between two reads; reading stops at ``limit``
        assert [m.message_id for m in state.pending_outbox(2)] == [
            "old", *(event_row(*values(n))[1] for n in range(PACK))]
        state.delete_outbox(sorted(set(ids[:PACK + 1])))
        assert [m.message_id for m in state.pending_outbox(10)] == [
            event_row(*values(n))[1] for n in (PACK, PACK + 1)] + ["new"]

    def test_reading_sees_what_was_committed(self, state: State) -> None:
        with state.transaction() as tx:
            tx.enter("vip", "p1", 1.0)
            tx.put_trait_states("p1", {"n": {"v": 1}})
        with state.reading() as tx:
            assert tx.memberships(["p1", "p2"]) == {"p1": {"vip": 1.0}, "p2": {}}
            assert tx.trait_states(["p1"]) == {"p1": {"n": {"v": 1}}}

    def test_locked_profiles_are_changed_by_one_transaction_at_a_time(self, state: State) -> None:
        """Two writers incrementing one profile's state never lose an update."""

        def bump() -> None:
            for _ in range(20):
                with state.transaction() as tx:
                    tx.lock(["p1"])
                    n = tx.trait_states(["p1"])["p1"].get("n", {"v": 0})["v"]
                    time.sleep(0.0005)
                    tx.put_trait_states("p1", {"n": {"v": n + 1}})

        threads = [threading.Thread(target=bump) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert state.trait_states_of("p1")["n"] == {"v": 40}

    def test_saved_audiences_create_replace_evaluate_and_delete(self, state: State) -> None:
        rule = {"path": "traits.tier", "eq": "plus"}
        empty = state.audiences_version()
        assert state.saved_audiences() == []
        assert state.save_audience("vip", {"name": "vip", "rule": rule}, "d1", 10.0) is True
        created = state.audiences_version()
        assert created != empty
        [vip] = state.saved_audiences()
        assert (vip.name, vip.definition, vip.digest, vip.created_at, vip.updated_at,
                vip.evaluated) == ("vip", {"name": "vip", "rule": rule}, "d1", 10.0, 10.0, False)

        state.mark_evaluated("vip", "d1")
        assert state.saved_audiences()[0].evaluated is True
        assert state.audiences_version() != created  # readers learn it was filled in

        other = {"name": "vip", "description": "plus", "rule": rule}
        assert state.save_audience("vip", other, "d2", 20.0) is False  # replaced
        [vip] = state.saved_audiences()
        assert (vip.definition, vip.digest, vip.created_at, vip.updated_at, vip.evaluated) == (
            other, "d2", 10.0, 20.0, False)
        state.mark_evaluated("vip", "d1")  # a worker finishing the old definition: not this
        assert state.saved_audiences()[0].evaluated is False

        assert state.save_audience("all", {"name": "all", "rule": rule}, "d3", 30.0) is True
        assert [a.name for a in state.saved_audiences()] == ["all", "vip"]
        before = state.audiences_version()
        assert state.delete_audience("vip") is True
        assert state.delete_audience("vip") is False
        assert state.audiences_version() != before
        assert [a.name for a in state.saved_audiences()] == ["all"]

    def test_saved_audiences_outlive_a_reset(self, state: State) -> None:
        state.save_audience("vip", {"name": "vip", "rule": {"consent": "x"}}, "d1", 1.0)
        state.reset()
        assert [a.name for a in state.saved_audiences()] == ["vip"]

    def test_an_erasure_deletes_like_any_transaction(self, state: State) -> None:
        with state.transaction() as tx:
            tx.put_trait_states("p1", {"x": {"life": {"last": "secret-value"}}})
            tx.enter("vip", "p1", 1.0)
        with state.erasing(), state.transaction() as tx:
            tx.drop(["p1"])
        assert state.profile_ids() == []
