"""The store contract: every backend's test module subclasses :class:`StoreContract`.

A subclass provides ``make_store(tmp_path)`` returning a store with an empty,
migrated schema of its own; every test here then runs unchanged against it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tessera.store.base import NewProfile, ProfileColumns, Store, TimelineEntry, Trait
from tessera.store.outbox_pack import PackedMessages, Template, expand


def pid() -> str:
    return "prf_" + uuid.uuid4().hex


def entry(uid: str, t: float) -> TimelineEntry:
    return TimelineEntry(
        event_uid=uid,
        type="page",
        source="web",
        time=t,
        received_at=t,
        event={"id": uid, "type": "page"},
    )


UPDATED = Template(
    "derived", (0,), ("profile_id:", 1),
    ('{"id":"', 0, ':profile.updated","type":"profile.updated","data":{"profile_id":"', 1,
     '","changed":', 2, '},"subject":"', 1, '"}'))
"""A ``profile.updated`` of the batch import, reduced: fields uid, profile id, changes."""


def updates(pids: list[str], tag: str = "") -> PackedMessages:
    """One packed ``profile.updated`` per profile (changed values with quotes, braces,
    non-ASCII text)."""
    return PackedMessages.build(UPDATED, [
        f"{tag}{k:031x}\x1f{p}\x1f{{\"name\":{{\"old\":null,\"new\":\"Zoë {{{k}}}\"}}}}"
        for k, p in enumerate(pids)])


Message = tuple[str, str, str, bytes]


def pending(store: Store, limit: int = 100_000) -> list[Message]:
    return [(m.topic, m.message_id, m.key, m.payload) for m in store.pending_outbox(limit)]


class StoreContract:
    def make_store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            yield store
        finally:
            store.close()

    def test_create_link_and_resolve(self, store: Store) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 100.0)
            tx.link(p, [("email", "a@x.io"), ("user_id", "u1")], "ev1", 100.0, "web")
        assert store.resolve("email:a@x.io") == p
        assert store.resolve("user_id:u1") == p
        assert store.resolve(p) == p
        assert store.resolve("email:nobody@x.io") is None
        assert store.resolve("prf_unknown") is None
        profile = store.get_profile(p)
        assert profile is not None
        assert {(i.type, i.value) for i in profile.identities} == {
            ("email", "a@x.io"),
            ("user_id", "u1"),
        }
        assert all(i.event_uid == "ev1" and i.source == "web" for i in profile.identities)

    def test_lookup_and_identifiers_of(self, store: Store) -> None:
        p1, p2 = pid(), pid()
        with store.transaction() as tx:
            tx.create_profile(p1, 1.0)
            tx.create_profile(p2, 1.0)
            tx.link(p1, [("email", "a@x.io")], "e1", 1.0, "web")
            tx.link(p2, [("phone", "+15555550100"), ("user_id", "u2")], "e2", 1.0, "crm")
        with store.transaction() as tx:
            found = tx.lookup([("email", "a@x.io"), ("user_id", "u2"), ("user_id", "nope")])
            assert found == {("email", "a@x.io"): p1, ("user_id", "u2"): p2}
            graph = tx.identifiers_of([p1, p2])
            assert sorted(graph[p1]) == [("email", "a@x.io")]
            assert sorted(graph[p2]) == [("phone", "+15555550100"), ("user_id", "u2")]

    def test_rollback_on_exception_keeps_nothing(self, store: Store) -> None:
        p = pid()
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.link(p, [("email", "gone@x.io")], "e1", 1.0, "web")
            tx.mark_applied(["e1"], 1.0)
            raise RuntimeError("crash before commit")
        assert store.resolve("email:gone@x.io") is None
        with store.transaction() as tx:
            assert tx.applied(["e1"]) == set()

    def test_applied_events_are_remembered(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.mark_applied(["a", "b"], 1.0)
        with store.transaction() as tx:
            assert tx.applied(["a", "b", "c"]) == {"a", "b"}
        assert store.counts()["events_applied"] == 2

    def test_applied_is_read_without_waiting_for_a_writer(self, store: Store) -> None:
        """Other processors poll it while the profiles processor writes: a plain read of
        what is committed, that neither waits for nor holds up an open transaction."""
        with store.transaction() as tx:
            tx.mark_applied(["ev-done"], 1.0)
        writing, release = threading.Event(), threading.Event()

        def writer() -> None:
            with store.transaction() as tx:
                tx.mark_applied(["ev-open"], 2.0)
                writing.set()
                release.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert writing.wait(10)
            started = time.monotonic()
            assert store.applied(["ev-done", "ev-open", "ev-never"]) == {"ev-done"}
            assert time.monotonic() - started < 1.0
        finally:
            release.set()
            thread.join(10)
        assert store.applied(["ev-done", "ev-open"]) == {"ev-done", "ev-open"}
        assert store.applied([]) == set()

    def test_traits_put_replace_and_delete(self, store: Store) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.put_traits(
                p,
                {
                    "city": Trait("Paris", "web", 10.0, 0, "e1"),
                    "tags": Trait({"a": [1, 2]}, "crm", 11.0, 2, "e2"),
                },
            )
        with store.transaction() as tx:
            tx.put_traits(p, {"city": Trait("Lyon", "crm", 12.0, 1, "e3")})
            got = tx.traits([p])[p]
        assert got["city"] == Trait("Lyon", "crm", 12.0, 1, "e3")
        assert got["tags"].value == {"a": [1, 2]}
        profile = store.get_profile(p)
        assert profile is not None and profile.traits["city"].value == "Lyon"
        with store.transaction() as tx:
            tx.delete_traits([p])
            assert tx.traits([p]) == {p: {}}

    def test_timeline_newest_first_with_paging(self, store: Store) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.append_timeline(p, [entry(f"e{i}", float(i)) for i in range(5)], 1.0)
        profile = store.get_profile(p)
        assert profile is not None and profile.event_count == 5
        page1 = store.timeline(p, 2)
        assert [e.event_uid for e in page1] == ["e4", "e3"]
        page2 = store.timeline(p, 2, (page1[-1].time, page1[-1].event_uid))
        assert [e.event_uid for e in page2] == ["e2", "e1"]
        assert page2[0].event == {"id": "e2", "type": "page"}

    def test_merge_moves_links_timeline_and_redirects(self, store: Store) -> None:
        a, b, c = pid(), pid(), pid()
        with store.transaction() as tx:
            for p in (a, b, c):
                tx.create_profile(p, 1.0)
            tx.link(a, [("email", "a@x.io")], "e1", 1.0, "web")
            tx.link(b, [("user_id", "u1")], "e2", 1.0, "web")
            tx.link(c, [("phone", "+15555550100")], "e3", 1.0, "web")
            tx.append_timeline(a, [entry("e1", 1.0)], 1.0)
            tx.append_timeline(b, [entry("e2", 2.0)], 1.0)
            tx.append_timeline(c, [entry("e3", 3.0)], 1.0)
        with store.transaction() as tx:
            tx.merge(a, [b], "e4", 4.0, "deterministic")
        with store.transaction() as tx:
            tx.merge(c, [a], "e5", 5.0, "deterministic")
        for ident in ("email:a@x.io", "user_id:u1", "phone:+15555550100", a, b, c):
            assert store.resolve(ident) == c
        assert store.get_profile(a) is None
        survivor = store.get_profile(c)
        assert survivor is not None
        assert survivor.event_count == 3
        assert len(survivor.identities) == 3
        assert {m.merged for m in survivor.merged_from} == {a, b}
        assert {m.event_uid for m in survivor.merged_from} == {"e4", "e5"}
        assert [e.event_uid for e in store.timeline(c, 10)] == ["e3", "e2", "e1"]
        assert store.counts()["profiles"] == 1
        assert store.counts()["merges"] == 2

    def test_merges_in_one_transaction_end_as_one_after_the_other(self, store: Store) -> None:
        """b into a, then a into c, in one transaction; d was merged into b before."""
        a, b, c, d = pid(), pid(), pid(), pid()
        with store.transaction() as tx:
            for n, p in enumerate((a, b, c, d)):
                tx.create_profile(p, 10.0 - n)
            tx.link(d, [("anonymous_id", "anon-d")], "e0", 1.0, "web")
            tx.append_timeline(d, [entry("e0", 0.5)], 1.0)
        with store.transaction() as tx:
            tx.merge(b, [d], "e0m", 1.5, "deterministic")
        with store.transaction() as tx:
            tx.lock_profiles(sorted([a, b, c]))
            tx.link(a, [("email", "a@x.io")], "e1", 2.0, "web")
            tx.link(b, [("user_id", "u1")], "e2", 2.0, "web")
            tx.link(c, [("phone", "+15555550100")], "e3", 2.0, "web")
            tx.append_timeline(a, [entry("e1", 1.0)], 2.0)
            tx.append_timeline(b, [entry("e2", 2.0)], 2.0)
            tx.merge(a, [b], "e4", 4.0, "deterministic")
            assert tx.lookup([("user_id", "u1")]) == {("user_id", "u1"): a}
            tx.append_timeline(c, [entry("e3", 3.0)], 4.0)
            tx.merge(c, [a], "e5", 4.0, "deterministic")
            assert set(tx.identifiers_of([c])[c]) == {
                ("email", "a@x.io"), ("user_id", "u1"), ("phone", "+15555550100"),
                ("anonymous_id", "anon-d")}
        for ident in ("email:a@x.io", "user_id:u1", "anonymous_id:anon-d", a, b, c, d):
            assert store.resolve(ident) == c, ident
        for gone in (a, b, d):
            assert store.get_profile(gone) is None
        survivor = store.get_profile(c)
        assert survivor is not None
        assert survivor.event_count == 4
        assert survivor.created_at == 7.0  # d's, the oldest
        assert {(m.merged, m.event_uid) for m in survivor.merged_from} == {
            (d, "e0m"), (b, "e4"), (a, "e5")}
        assert [e.event_uid for e in store.timeline(c, 10)] == ["e3", "e2", "e1", "e0"]
        assert store.counts()["profiles"] == 1
        assert store.counts()["merges"] == 3

    def test_outbox_in_order_and_deleted(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.add_outbox([("derived", "d1", "k", b"one"), ("derived", "d2", "k", b"two")])
        pending = store.pending_outbox(10)
        assert [(m.message_id, m.payload) for m in pending] == [("d1", b"one"), ("d2", b"two")]
        store.delete_outbox([pending[0].id])
        assert [m.message_id for m in store.pending_outbox(10)] == ["d2"]

    def _packed_between_ordinary(self, store: Store) -> list[Message]:
        """Ordinary and packed messages, interleaved within and across transactions, in
        the order they are expected back."""
        first, second = updates([pid() for _ in range(2500)]), updates([pid() for _ in range(3)])
        a1, a2, a3 = (("derived", f"a{i}", "k", b'{"a":%d}' % i) for i in range(1, 4))
        with store.transaction() as tx:
            tx.add_outbox([a1])
            tx.add_outbox_packed(first)
            tx.add_outbox([a2])
        with store.transaction() as tx:
            tx.add_outbox_packed(second)
            tx.add_outbox_packed(updates([]))  # nothing at all
            tx.add_outbox([a3])
        return [a1, *expand(first), a2, *expand(second), a3]

    def test_packed_outbox_messages_read_back_expanded_and_in_order(self, store: Store) -> None:
        expected = self._packed_between_ordinary(store)
        assert len(expected) == 2506 and expected[1][3].startswith(b'{"id":"')
        assert pending(store) == expected

    def test_packed_outbox_relayed_in_pages_loses_and_repeats_nothing(
        self, store: Store
    ) -> None:
        """``limit`` is a wish, not a cut: a page holds at least ``limit`` messages (or all
        that are left), is the next part of the order, and deleting its ids (a packed
        row's id once per message, as the relay passes them) removes exactly it."""
        expected = self._packed_between_ordinary(store)
        for limit in (1, 2, 999, 1000, 1001, 3000):
            relayed: list[Message] = []
            while page := store.pending_outbox(limit):
                got = [(m.topic, m.message_id, m.key, m.payload) for m in page]
                assert got == expected[len(relayed):len(relayed) + len(got)], limit
                assert len(got) >= min(limit, len(expected) - len(relayed)), limit
                relayed += got
                store.delete_outbox([m.id for m in page])
            assert relayed == expected, limit
            assert store.pending_outbox(10) == []
            expected = self._packed_between_ordinary(store)

    def test_deleting_an_id_removes_every_message_that_carries_it(self, store: Store) -> None:
        """A backend that keeps a packed row gives each of its messages the row's id, and
        deleting it removes them all; one that spells them out removes the one."""
        packed = updates([pid() for _ in range(5)])
        with store.transaction() as tx:
            tx.add_outbox_packed(packed)
            tx.add_outbox([("derived", "after", "k", b"{}")])
        everything = store.pending_outbox(100)
        assert [(m.topic, m.message_id, m.key, m.payload) for m in everything] == [
            *expand(packed), ("derived", "after", "k", b"{}")]
        doomed = store.pending_outbox(1)[0].id
        store.delete_outbox([doomed])
        assert pending(store) == [(m.topic, m.message_id, m.key, m.payload)
                                  for m in everything if m.id != doomed]
        assert pending(store)[-1] == ("derived", "after", "k", b"{}")

    def test_a_rolled_back_packed_outbox_leaves_nothing(self, store: Store) -> None:
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.add_outbox_packed(updates([pid() for _ in range(1500)]))
            raise RuntimeError("crash before commit")
        assert store.pending_outbox(10) == []

    def test_data_survives_reopen(self, store: Store, tmp_path: Path) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.link(p, [("email", "keep@x.io")], "e1", 1.0, "web")
        store.close()
        again = self.make_store(tmp_path)
        try:
            assert again.resolve("email:keep@x.io") == p
        finally:
            again.close()

    def test_duplicate_identifier_link_is_refused(self, store: Store) -> None:
        a, b = pid(), pid()
        with store.transaction() as tx:
            tx.create_profile(a, 1.0)
            tx.link(a, [("email", "one@x.io")], "e1", 1.0, "web")
        with pytest.raises(Exception), store.transaction() as tx:  # noqa: B017 - backend error
            tx.create_profile(b, 1.0)
            tx.link(b, [("email", "one@x.io")], "e2", 1.0, "web")
        assert store.resolve("email:one@x.io") == a

    def test_reset_drops_every_projection(self, store: Store) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.link(p, [("email", "reset@x.io")], "e1", 1.0, "web")
            tx.put_traits(p, {"city": Trait("Paris", "web", 1.0)})
            tx.append_timeline(p, [entry("e1", 1.0)], 1.0)
            tx.mark_applied(["e1"], 1.0)
        store.reset()
        assert store.resolve("email:reset@x.io") is None
        assert store.counts() == {"profiles": 0, "identities": 0, "events_applied": 0,
                                  "merges": 0}
        with store.transaction() as tx:
            assert tx.applied(["e1"]) == set()

    def test_split_undoes_a_merge(self, store: Store) -> None:
        a, b, c = pid(), pid(), pid()
        with store.transaction() as tx:
            tx.create_profile(a, 1.0)
            tx.create_profile(b, 1.0)
            tx.link(a, [("email", "a@x.io")], "e1", 1.0, "web")
            tx.link(b, [("user_id", "u-b"), ("phone", "+15555550100")], "e2", 1.0, "web")
            tx.append_timeline(a, [entry("e1", 1.0)], 1.0)
            tx.append_timeline(b, [entry("e2", 2.0), entry("e3", 3.0)], 1.0)
        with store.transaction() as tx:
            tx.merge(a, [b], "e4", 4.0, "probabilistic, score 0.97")
        assert store.resolve("user_id:u-b") == a
        with store.transaction() as tx:
            tx.split(a, b, [("user_id", "u-b")], ["e2"], 5.0)
        assert store.resolve("user_id:u-b") == b
        assert store.resolve("phone:+15555550100") == a
        revived = store.get_profile(b)
        kept = store.get_profile(a)
        assert revived is not None and kept is not None
        assert revived.event_count == 1 and kept.event_count == 2
        assert kept.merged_from == []
        assert [e.event_uid for e in store.timeline(b, 10)] == ["e2"]
        with store.transaction() as tx:  # into a brand-new profile
            tx.split(a, c, [("phone", "+15555550100")], ["e3"], 6.0)
        assert store.resolve("phone:+15555550100") == c
        new = store.get_profile(c)
        assert new is not None and new.event_count == 1
        assert store.counts()["profiles"] == 3

    def test_iter_profile_ids_lists_live_profiles_in_order(self, store: Store) -> None:
        a, b, c = sorted(pid() for _ in range(3))
        with store.transaction() as tx:
            for p in (a, b, c):
                tx.create_profile(p, 1.0)
        with store.transaction() as tx:
            tx.merge(a, [b], "e1", 2.0, "deterministic")
        assert list(store.iter_profile_ids()) == [a, c]

    def test_trait_values_lists_live_profiles_with_the_wanted_traits(
            self, store: Store) -> None:
        ids = sorted(pid() for _ in range(7))
        with store.transaction() as tx:
            for p in ids:
                tx.create_profile(p, 1.0)
            for i, p in enumerate(ids):
                traits = {"tier": Trait("gold", "crm", 1.0)}
                if i != 3:  # the fourth profile has no wanted trait at all
                    traits["name"] = Trait(f"Name {i}", "web", 1.0, 3, f"e{i}")
                if i % 2 == 0:
                    traits["city"] = Trait({"name": f"City {i}"}, "crm", 2.0)
                tx.put_traits(p, traits)
        with store.transaction() as tx:  # a merged-away profile is not listed
            tx.merge(ids[0], [ids[5]], "m1", 2.0, "deterministic")
        expected = [(p, {"name": f"Name {i}", **({"city": {"name": f"City {i}"}}
                                                   if i % 2 == 0 else {})})
                    for i, p in enumerate(ids) if i not in (3, 5)]
        for page in (2, 3, 5000):  # page boundaries fall before, on and after the gaps
            assert list(store.trait_values(["name", "city", "name"], page=page)) == expected
        assert list(store.trait_values(["city"])) == [
            (p, {"city": {"name": f"City {i}"}}) for i, p in enumerate(ids) if i % 2 == 0]
        assert list(store.trait_values(["missing"])) == []
        assert list(store.trait_values([])) == []

    def _person_and_bystander(self, store: Store) -> tuple[str, str, str]:
        """Jane (two profiles merged into one) and Bob, who shares nothing with her."""
        jane, jane_old, bob = pid(), pid(), pid()
        with store.transaction() as tx:
            for p in (jane, jane_old, bob):
                tx.create_profile(p, 1.0)
            tx.link(jane, [("email", "jane@x.io")], "e1", 1.0, "web")
            tx.link(jane_old, [("phone", "+15555550199")], "e2", 1.0, "app")
            tx.link(bob, [("email", "bob@x.io")], "e3", 1.0, "web")
            tx.append_timeline(jane, [entry("e1", 1.0)], 1.0)
            tx.append_timeline(jane_old, [entry("e2", 2.0)], 1.0)
            tx.append_timeline(bob, [entry("e3", 3.0)], 1.0)
            tx.put_traits(jane, {"name": Trait("Jane Q", "web", 1.0)})
            tx.put_traits(bob, {"name": Trait("Bob R", "web", 1.0)})
        with store.transaction() as tx:
            tx.merge(jane, [jane_old], "e4", 4.0, "deterministic")
            tx.add_outbox([("derived", "d1", jane, b'{"profile_id":"' + jane.encode() + b'"}'),
                           ("derived", "d2", bob, b'{"profile_id":"' + bob.encode() + b'"}')])
        return jane, jane_old, bob

    def test_erase_removes_the_whole_resolved_person_and_nobody_else(
        self, store: Store
    ) -> None:
        jane, jane_old, bob = self._person_and_bystander(store)
        erased = store.erase(jane)
        assert sorted(erased.profile_ids) == sorted([jane, jane_old])
        assert sorted(erased.identifiers) == [("email", "jane@x.io"), ("phone", "+15555550199")]
        assert sorted(erased.event_uids) == ["e1", "e2"]
        for ident in ("email:jane@x.io", "phone:+15555550199", jane, jane_old):
            assert store.resolve(ident) is None, ident
        assert store.get_profile(jane) is None
        assert store.timeline(jane, 10) == []
        assert [m.message_id for m in store.pending_outbox(10)] == ["d2"]
        assert store.counts()["profiles"] == 1 and store.counts()["merges"] == 0
        kept = store.get_profile(bob)
        assert kept is not None and kept.traits["name"].value == "Bob R"
        assert [e.event_uid for e in store.timeline(bob, 10)] == ["e3"]
        assert store.erase(jane) == type(erased)([], [], [])
        assert store.erase(jane_old).profile_ids == []

    def test_erase_takes_the_persons_messages_out_of_a_packed_row_and_keeps_the_others(
        self, store: Store
    ) -> None:
        """Jane's messages share packed rows with Bob's and Carol's (one names her merged
        profile): only hers go, the others stay pending byte for byte, in order."""
        jane, jane_old, bob = self._person_and_bystander(store)
        carol = pid()
        with store.transaction() as tx:
            tx.create_profile(carol, 1.0)
            tx.add_outbox_packed(updates([bob, jane, carol], "a"))
            tx.add_outbox_packed(updates([jane_old], "b"))  # a row of hers alone
            tx.add_outbox_packed(updates([carol, bob], "c"))  # a row without her
        before = pending(store)
        store.erase(jane)
        after = pending(store)
        jane_ids = (jane.encode(), jane_old.encode())
        assert after == [m for m in before if not any(j in m[3] for j in jane_ids)]
        assert [m[2] for m in after] == [bob, *(f"profile_id:{p}" for p in (bob, carol, carol,
                                                                              bob))]
        assert after[0][1] == "d2"  # the ordinary one, as before
        assert not any(j in m[3] or j in m[2].encode() for m in after for j in jane_ids)

    def test_erase_with_anonymize_keeps_counts_but_no_personal_data(self, store: Store) -> None:
        jane, _, _ = self._person_and_bystander(store)
        store.erase(jane, anonymize=True)
        kept = store.get_profile(jane)
        assert kept is not None
        assert kept.identities == [] and kept.traits == {} and kept.event_count == 2
        assert store.resolve("email:jane@x.io") is None
        assert [(e.event_uid, e.type, e.event) for e in store.timeline(jane, 10)] == [
            ("e2", "page", {}), ("e1", "page", {})]

    def test_replace_events_rewrites_documents_in_place(self, store: Store) -> None:
        p = pid()
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.append_timeline(p, [entry("e1", 1.0), entry("e2", 2.0)], 1.0)
        with store.transaction() as tx:
            found = tx.replace_events(p, {"e1": {"id": "e1", "v": 2}, "nope": {"id": "x"}})
        assert found == 1
        assert [(e.event_uid, e.event) for e in store.timeline(p, 10)] == [
            ("e2", {"id": "e2", "type": "page"}), ("e1", {"id": "e1", "v": 2})]
        profile = store.get_profile(p)
        assert profile is not None and profile.event_count == 2

    # -- the bulk and export operations (defaults built on the rest of the contract)

    def test_create_profiles_writes_what_the_single_calls_would(self, store: Store) -> None:
        a, b = pid(), pid()
        made = [NewProfile(p, [("email", f"{n}@x.io"), ("user_id", n)], f"ev-{n}", "crm",
                           {"city": Trait(n.upper(), "crm", 5.0, 3, f"ev-{n}")},
                           entry(f"ev-{n}", 5.0))
                for p, n in ((a, "a"), (b, "b"))]
        with store.transaction() as tx:
            tx.create_profiles(made, 7.0)
        profile = store.get_profile(b)
        assert profile is not None
        assert (profile.created_at, profile.updated_at, profile.event_count) == (7.0, 7.0, 1)
        assert profile.traits == {"city": Trait("B", "crm", 5.0, 3, "ev-b")}
        assert {(i.type, i.value, i.event_uid, i.source, i.linked_at, i.reason)
                for i in profile.identities} == {("email", "b@x.io", "ev-b", "crm", 7.0,
                                                  "deterministic"),
                                                 ("user_id", "b", "ev-b", "crm", 7.0,
                                                  "deterministic")}
        assert store.resolve("user_id:a") == a
        assert [e.event_uid for e in store.timeline(a, 10)] == ["ev-a"]
        assert store.timeline(a, 10)[0].event == {"id": "ev-a", "type": "page"}

    @pytest.mark.parametrize("shape", ["same times", "own times", "odd values"])
    def test_create_profile_columns_writes_what_create_profiles_writes(
            self, store: Store, shape: str) -> None:
        """Columns (the columnar import) give the same rows as :class:`NewProfile` objects:
        one time for every row, a time per row, and values of every width and script."""
        names = ["a", "b", "c"] if shape != "odd values" else ["ü", "", "long" * 40]
        ids = [pid() for _ in names]
        times = [5.0] * 3 if shape != "own times" else [5.0, 6.25, 1e-7]
        docs = [{"id": f"ev-{n}", "data": {"traits": {"city": n}}} for n in names]
        links = [(0, "email", f"{names[0]}@x.io"), (0, "user_id", "u0"),
                 (2, "email", f"{names[2]}@x.io")]          # row 1 has no identifier
        traits = [(0, "city", names[0], 3), (1, "city", names[1], 3), (1, "n", 1.5, 0),
                  (2, "tags", ["x", {"y": None}], 3)]
        columns = ProfileColumns(
            source="crm", ids=ids, event_uids=[f"ev-{i}" for i in range(3)],
            types=["t.a", "t.b", "t.c"], times=times, received_at=[9.0] * 3,
            documents=[orjson.dumps(d).decode() for d in docs],
            link_rows=[r for r, _, _ in links], link_types=[t for _, t, _ in links],
            link_values=[v for _, _, v in links], trait_rows=[r for r, *_ in traits],
            trait_names=[n for _, n, _, _ in traits],
            trait_values=[orjson.dumps(v).decode() for _, _, v, _ in traits],
            trait_priorities=[p for *_, p in traits])
        expected = {
            0: ({("email", f"{names[0]}@x.io"), ("user_id", "u0")},
                {"city": Trait(names[0], "crm", times[0], 3, "ev-0")}),
            1: (set(), {"city": Trait(names[1], "crm", times[1], 3, "ev-1"),
                        "n": Trait(1.5, "crm", times[1], 0, "ev-1")}),
            2: ({("email", f"{names[2]}@x.io")},
                {"tags": Trait(["x", {"y": None}], "crm", times[2], 3, "ev-2")}),
        }
        with store.transaction() as tx:
            tx.create_profile_columns(columns, 7.0)
            tx.create_profile_columns(ProfileColumns("crm", *([] for _ in range(13))), 7.0)
        for row, (idents, want_traits) in expected.items():
            profile = store.get_profile(ids[row])
            assert profile is not None
            assert (profile.created_at, profile.updated_at, profile.event_count) == (7.0, 7.0, 1)
            assert profile.traits == want_traits
            assert {(i.type, i.value) for i in profile.identities} == idents
            assert all((i.profile_id, i.event_uid, i.source, i.linked_at, i.reason)
                       == (ids[row], f"ev-{row}", "crm", 7.0, "deterministic")
                       for i in profile.identities)
            [got] = store.timeline(ids[row], 10)
            assert (got.event_uid, got.type, got.source, got.time, got.received_at,
                    got.event) == (f"ev-{row}", f"t.{'abc'[row]}", "crm", times[row], 9.0,
                                   docs[row])
        assert store.resolve(f"email:{names[2]}@x.io") == ids[2]

    def test_create_profile_columns_of_a_whole_chunk(self, store: Store) -> None:
        """Enough rows for every way SQLite packs a column: one value for all, a few
        values, widths padded to one, non-ASCII text, values of very different widths."""
        n = 150
        ids = sorted(pid() for _ in range(n))
        names = ["city", "tier", "note"]
        values: dict[tuple[int, str], Any] = {}
        for i in range(n):
            values[(i, "city")] = ["Oslo", "Bergen", "Tromsø"][i % 3]
            values[(i, "tier")] = i % 4
            values[(i, "note")] = "x" * (i * 7) if i % 10 == 0 else f"note {i} "
        columns = ProfileColumns(
            source="crm", ids=ids, event_uids=[f"ev-{i}" for i in range(n)],
            types=["t"] * n, times=[5.0] * n, received_at=[9.0] * n,
            documents=[orjson.dumps({"id": i, "pad": "é" * (i % 3)}).decode() for i in range(n)],
            link_rows=[i for i in range(n) for _ in (0, 1)],
            link_types=["email", "user_id"] * n,
            link_values=[v for i in range(n) for v in (f"p{i}@x.io", f"u{i:04d}")],
            trait_rows=[i for i in range(n) for _ in names], trait_names=names * n,
            trait_values=[orjson.dumps(values[(i, name)]).decode()
                          for i in range(n) for name in names],
            trait_priorities=[i % 2 for i in range(n) for _ in names])
        with store.transaction() as tx:
            tx.create_profile_columns(columns, 7.0)
        for i in (0, 1, 10, 77, n - 1):
            profile = store.get_profile(ids[i])
            assert profile is not None, i
            assert profile.traits == {name: Trait(values[(i, name)], "crm", 5.0, i % 2, f"ev-{i}")
                                      for name in names}
            assert sorted((x.type, x.value) for x in profile.identities) == [
                ("email", f"p{i}@x.io"), ("user_id", f"u{i:04d}")]
            [got] = store.timeline(ids[i], 10)
            assert got.event == {"id": i, "pad": "é" * (i % 3)}
        assert store.counts()["identities"] == 2 * n

    def test_many_applied_marks_and_outbox_messages_at_once(self, store: Store) -> None:
        """A chunk's worth (SQLite writes these from packed columns) reads back the same,
        the outbox in the order given."""
        uids = [f"ev-{i}" for i in range(300)] + ["ünï-\u00e9", "x" * 70]
        messages = [("derived", f"m{i}", f"profile_id:p{i % 7}", b'{"n": %d}' % i + b"." * i)
                    for i in range(299, -1, -1)]
        with store.transaction() as tx:
            tx.mark_applied(uids, 3.0)
            tx.add_outbox(messages)
        with store.transaction() as tx:
            assert tx.applied([*uids, "ev-300"]) == set(uids)
        pending = store.pending_outbox(1000)
        assert [(m.topic, m.message_id, m.key, m.payload) for m in pending] == messages

    def test_lookup_of_a_whole_chunk(self, store: Store) -> None:
        """Many identifiers at once (the bulk import's one query per chunk) find the same."""
        owners = {("email", f"u{i}@x.io"): pid() for i in range(0, 1200, 2)}
        with store.transaction() as tx:
            for ident, p in owners.items():
                tx.create_profile(p, 1.0)
                tx.link(p, [ident], "e", 1.0, "web")
        asked = [("email", f"u{i}@x.io") for i in range(1200)] + [("user_id", "u0@x.io")]
        with store.transaction() as tx:
            assert tx.lookup(asked) == owners
            assert tx.lookup(asked[:3]) == {asked[0]: owners[asked[0]],
                                             asked[2]: owners[asked[2]]}

    def test_timeline_uids_and_entries_by_uid(self, store: Store) -> None:
        a, b = pid(), pid()
        with store.transaction() as tx:
            tx.create_profile(a, 1.0)
            tx.create_profile(b, 1.0)
            tx.append_timeline(a, [entry(f"a{i}", float(i)) for i in range(3)], 1.0)
        assert store.timeline_uids([a, b]) == {a: ["a2", "a1", "a0"], b: []}
        got = store.timeline_entries(a, ["a0", "a2", "missing"])
        assert [e.event_uid for e in got] == ["a2", "a0"]
        assert got[1].event == {"id": "a0", "type": "page"} and got[1].time == 0.0
        assert store.timeline_entries(b, ["a0"]) == []


class ChangeFeedContract(StoreContract):
    """``changed_profiles`` and ``touch``: the warehouse's incremental export reads these."""

    def test_changed_profiles_follow_updated_at(self, store: Store) -> None:
        a, b, c = sorted(pid() for _ in range(3))
        with store.transaction() as tx:
            for p in (a, b, c):
                tx.create_profile(p, 10.0)
        assert store.changed_profiles(9.0) == [a, b, c]
        assert store.changed_profiles(10.0) == []
        with store.transaction() as tx:
            tx.append_timeline(a, [entry("e1", 1.0)], 20.0)
            tx.touch([c], 21.0)
        assert store.changed_profiles(10.0) == [a, c]
        profile = store.get_profile(c)
        assert profile is not None and profile.updated_at == 21.0 and profile.event_count == 0
        with store.transaction() as tx:
            tx.merge(a, [b], "e2", 30.0, "deterministic")
        assert store.changed_profiles(21.0) == [a, b]  # the merged-away one too
