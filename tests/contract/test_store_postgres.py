"""The PostgreSQL store: the store contract, plus what only a multi-writer backend must do.

Every test gets a schema of its own (named after its ``tmp_path``, so reopening
finds the same one) on the real server, dropped afterwards.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tessera.config import default_config
from tessera.events.envelope import Event
from tessera.processing.profiles import ProfileProcessor
from tessera.store.base import Conflict, Identifier, Store, TimelineEntry
from tessera.store.postgres import (
    MIGRATIONS,
    Migration,
    PostgresStore,
    StoreUnavailable,
    migrate,
)
from tessera.store.sqlite import SQLiteStore
from tests.contract.store_contract import ChangeFeedContract, entry, pid
from tests.services import require_postgres

pytestmark = pytest.mark.services


def with_params(url: str, params: str) -> str:
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{params}"


def schema_for(tmp_path: Path, suffix: str = "") -> str:
    digest = hashlib.blake2b(f"{tmp_path}{suffix}".encode(), digest_size=8).hexdigest()
    return f"t_{digest}"


class TestPostgresStore(ChangeFeedContract):
    url: str
    schemas: set[str]

    @pytest.fixture(autouse=True)
    def _schemas(self) -> Iterator[None]:
        """Skip without a server; drop every schema the test made once it is over."""
        self.url = require_postgres()
        self.schemas = set()
        yield
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )

    def make_store(
        self, tmp_path: Path, suffix: str = "", url_params: str = "", **options: Any
    ) -> PostgresStore:
        schema = schema_for(tmp_path, suffix)
        self.schemas.add(schema)
        return PostgresStore(with_params(self.url, url_params), schema=schema, **options)

    @pytest.fixture
    def pg(self, tmp_path: Path) -> Iterator[PostgresStore]:
        store = self.make_store(tmp_path, pool_max_size=12)
        store.migrate()
        try:
            yield store
        finally:
            store.close()

    # -- schema migrations

    def test_migrations_are_versioned_and_idempotent(self, pg: PostgresStore) -> None:
        latest = [m.version for m in MIGRATIONS]
        assert pg.applied_migrations() == latest
        pg.migrate()
        assert migrate(self.url, schema=pg.schema) == []
        assert pg.applied_migrations() == latest
        extra = Migration(latest[-1] + 1, "test step", "CREATE TABLE extra (x int)")
        with pg._lock:
            assert pg._migrate([*MIGRATIONS, extra]) == [extra.version]
            assert pg._migrate([*MIGRATIONS, extra]) == []
        assert pg.applied_migrations() == [*latest, extra.version]

    def test_concurrent_migrations_apply_each_step_once(self, tmp_path: Path) -> None:
        stores = [self.make_store(tmp_path, "race", auto_migrate=False) for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda s: s.migrate(), stores))
            assert stores[0].applied_migrations() == [m.version for m in MIGRATIONS]
        finally:
            for s in stores:
                s.close()

    def test_schema_option_in_url(self, tmp_path: Path) -> None:
        schema = schema_for(tmp_path, "url")
        self.schemas.add(schema)
        store = PostgresStore(with_params(self.url, f"schema={schema}&pool_timeout=3"))
        try:
            with store.transaction() as tx:
                tx.create_profile("prf_url", 1.0)
            assert store.schema == schema and store.settings.pool_timeout == 3.0
            assert store.resolve("prf_url") == "prf_url"
        finally:
            store.close()
        with pytest.raises(ValueError):
            PostgresStore(self.url, schema="Robert'); DROP TABLE x;--")

    # -- races between writers

    def test_racing_links_of_one_identifier_one_conflicts(self, pg: PostgresStore) -> None:
        """The loser's insert waits for the winner's row, then fails: Conflict, nothing kept."""
        ident: Identifier = ("email", "race@x.io")
        a, b = pid(), pid()
        a_sent = threading.Event()
        outcome: dict[str, BaseException | None] = {}

        def first() -> None:
            try:
                with pg.transaction() as tx:
                    tx.create_profile(a, 1.0)
                    tx.link(a, [ident], "ea", 1.0, "web")
                    tx.identifiers_of([a])  # sends the pending insert now
                    a_sent.set()
                    time.sleep(0.3)  # the other insert is now waiting on ours
                outcome["a"] = None
            except BaseException as exc:
                outcome["a"] = exc

        def second() -> None:
            a_sent.wait(5)
            try:
                with pg.transaction() as tx:
                    tx.create_profile(b, 1.0)
                    tx.link(b, [ident], "eb", 1.0, "web")
                outcome["b"] = None
            except BaseException as exc:
                outcome["b"] = exc

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert outcome["a"] is None
        assert isinstance(outcome["b"], Conflict)
        assert pg.resolve("email:race@x.io") == a
        assert pg.get_profile(b) is None
        assert pg.counts() == {"profiles": 1, "identities": 1, "events_applied": 0, "merges": 0}
        with pg.transaction() as tx:  # the pool's connections still work
            assert tx.lookup([ident]) == {ident: a}

    def test_an_event_another_worker_applied_meanwhile_is_a_conflict(
        self, pg: PostgresStore
    ) -> None:
        """Two workers took the same event for unapplied; the one that commits second,
        whose batch also merges the event's profile into the first one's, gets a
        Conflict to retry (which then skips the event), not the timeline's key error."""
        entry = TimelineEntry("ev-dup", "com.example.t", "web", 5.0, 5.0, {"id": "ev-dup"})
        first, second = pid(), pid()
        with pg.transaction() as tx:
            tx.create_profile(first, 1.0)
            tx.append_timeline(first, [entry], 1.0)
            tx.mark_applied(["ev-dup"], 1.0)
        with pytest.raises(Conflict), pg.transaction() as tx:
            tx.create_profile(second, 2.0)
            tx.append_timeline(second, [entry], 2.0)
            tx.mark_applied(["ev-dup"], 2.0)
            tx.merge(first, [second], "ev-other", 2.0, "deterministic")
        assert pg.get_profile(second) is None
        assert pg.counts()["events_applied"] == 1

    def test_concurrent_first_links_exactly_one_wins(self, pg: PostgresStore) -> None:
        """Many transactions link one new identifier at once (no locks): one commits."""
        ident: Identifier = ("user_id", "u-race")
        start = threading.Barrier(6)

        def attempt(i: int) -> str:
            p = pid()
            start.wait(5)
            try:
                with pg.transaction() as tx:
                    tx.create_profile(p, 1.0)
                    tx.link(p, [ident], f"e{i}", 1.0, "web")
                    tx.mark_applied([f"e{i}"], 1.0)
            except Conflict:
                return "conflict"
            return p

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(attempt, range(6)))
        winners = [r for r in results if r != "conflict"]
        assert len(winners) == 1
        assert pg.resolve("user_id:u-race") == winners[0]
        assert pg.counts() == {"profiles": 1, "identities": 1, "events_applied": 1, "merges": 0}

    def test_lock_identifiers_excludes_other_transactions(self, pg: PostgresStore) -> None:
        ident: Identifier = ("email", "locked@x.io")
        key = pg_key(pg, ident)
        with pg.transaction() as tx:
            tx.lock_identifiers([ident])
            tx.lookup([ident])  # the lock statement has run
            with psycopg.connect(self.url, autocommit=True) as other:
                got = other.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
                assert got == (False,)
        with psycopg.connect(self.url, autocommit=True) as other:
            got = other.execute("SELECT pg_try_advisory_xact_lock(%s)", [key]).fetchone()
            assert got == (True,)

    def test_deadlock_between_batches_is_a_conflict(self, pg: PostgresStore) -> None:
        """Locks taken by two calls can cross between transactions: one side must retry.

        Each transaction holds its first identifier and then asks for the
        other's: PostgreSQL breaks the cycle (after deadlock_timeout) by
        failing one, which the store reports as Conflict; the other commits.
        """
        x: Identifier = ("email", "x@x.io")
        y: Identifier = ("email", "y@x.io")
        both_hold = threading.Barrier(2)
        outcome: dict[str, BaseException | None] = {}

        def side(name: str, first: Identifier, second: Identifier) -> None:
            try:
                with pg.transaction() as tx:
                    tx.lock_identifiers([first])
                    tx.lookup([first])
                    both_hold.wait(5)
                    tx.lock_identifiers([second])
                    tx.lookup([second])
                outcome[name] = None
            except BaseException as exc:
                outcome[name] = exc

        threads = [
            threading.Thread(target=side, args=("a", x, y)),
            threading.Thread(target=side, args=("b", y, x)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        results = sorted(type(outcome[n]).__name__ for n in "ab")
        assert results == ["Conflict", "NoneType"], outcome

    def test_overlapping_lock_sets_in_any_order_never_deadlock(self, pg: PostgresStore) -> None:
        """Each side asks for an overlapping set in its own order; sorting makes that safe."""
        shared: list[Identifier] = [("email", f"{i}@x.io") for i in range(8)]
        errors: list[BaseException] = []
        done = [0, 0]

        def worker(n: int) -> None:
            rnd = random.Random(n)
            for i in range(60):
                idents = [*shared, ("user_id", f"{n}-{i}")]
                rnd.shuffle(idents)
                try:
                    with pg.transaction() as tx:
                        tx.lock_identifiers(idents)
                        tx.lookup(idents)
                    done[n] += 1
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert done == [60, 60]

    def test_a_transactions_merges_go_in_one_set_of_statements(self, pg: PostgresStore) -> None:
        """Ten merges cost what one does: seven statements at commit, no flush per merge."""
        profiles = [pid() for _ in range(11)]
        with pg.transaction() as tx:
            for n, p in enumerate(profiles):
                tx.create_profile(p, 1.0)
                tx.link(p, [("email", f"m{n}@x.io")], f"e{n}", 1.0, "web")
        sent: list[str] = []
        with pg.transaction() as tx:
            writer = tx._w  # type: ignore[attr-defined]

            class Counting:
                def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                    sent.append(str(query))
                    return writer.execute(query, params, **kw)

            tx._w = Counting()  # type: ignore[attr-defined]
            tx.lock_profiles(sorted(profiles))
            for n in range(1, 11):
                tx.merge(profiles[0], [profiles[n]], f"m{n}", 2.0, "deterministic")
        assert len(sent) == 7 + 1  # the merges, and the lock
        survivor = pg.get_profile(profiles[0])
        assert survivor is not None and len(survivor.identities) == 11
        assert {m.merged for m in survivor.merged_from} == set(profiles[1:])

    def test_merge_after_concurrent_merge_follows_the_survivor(self, pg: PostgresStore) -> None:
        """Lock, look up again, merge by id: a merge that committed meanwhile is not undone."""
        a, b, c = pid(), pid(), pid()
        with pg.transaction() as tx:
            for p in (a, b, c):
                tx.create_profile(p, 1.0)
            tx.link(a, [("email", "a@x.io")], "e1", 1.0, "web")
            tx.link(b, [("user_id", "ub")], "e2", 1.0, "web")
            tx.link(c, [("phone", "+15555550100")], "e3", 1.0, "web")
        seen = threading.Event()
        merged = threading.Event()
        result: dict[str, Any] = {}

        def late() -> None:
            with pg.transaction() as tx:
                idents: list[Identifier] = [("email", "a@x.io"), ("phone", "+15555550100")]
                tx.lock_identifiers(idents)
                found = tx.lookup(idents)  # a and c, before the other merge commits
                seen.set()
                merged.wait(5)
                for _ in range(8):
                    tx.lock_profiles(sorted(set(found.values())))
                    again = tx.lookup(idents)
                    if again == found:
                        break
                    found = again
                result["found"] = found
                targets = sorted(set(found.values()))
                tx.merge(targets[0], targets[1:], "e5", 5.0, "deterministic")
                result["into"] = targets[0]

        thread = threading.Thread(target=late)
        thread.start()
        seen.wait(5)
        with pg.transaction() as tx:
            tx.lock_profiles(sorted([a, b]))
            tx.merge(b, [a], "e4", 4.0, "deterministic")
        merged.set()
        thread.join(10)
        assert result["found"][("email", "a@x.io")] == b
        survivor = result["into"]
        for ident in ("email:a@x.io", "user_id:ub", "phone:+15555550100", a, b, c):
            assert pg.resolve(ident) == survivor
        assert pg.counts()["profiles"] == 1
        profile = pg.get_profile(survivor)
        assert profile is not None and len(profile.identities) == 3

    # -- availability

    def test_pool_recovers_when_connections_are_killed(self, tmp_path: Path) -> None:
        """What a server restart does to a client: every pooled connection dies at once."""
        app = f"tessera_{schema_for(tmp_path, 'kill')}"
        store = self.make_store(
            tmp_path, "kill", pool_min_size=3, url_params=f"application_name={app}"
        )
        try:
            with store.transaction() as tx:
                tx.create_profile("prf_before", 1.0)
            with psycopg.connect(self.url, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    [app],
                ).fetchone()
            assert row is not None and row[0] >= 1
            with store.transaction() as tx:
                tx.create_profile("prf_after", 1.0)
            assert store.resolve("prf_before") == "prf_before"
            assert store.resolve("prf_after") == "prf_after"
        finally:
            store.close()

    def test_unreachable_server_fails_fast_and_clearly(self) -> None:
        store = PostgresStore(
            "postgresql://postgres@127.0.0.1:1/test", pool_timeout=1.5, auto_migrate=False
        )
        try:
            started = time.monotonic()
            with (
                pytest.raises(StoreUnavailable, match="no working connection"),
                store.transaction(),
            ):
                pass
            assert time.monotonic() - started < 10
            with pytest.raises(StoreUnavailable):
                store.resolve("email:a@x.io")
        finally:
            store.close()
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            migrate("postgresql://postgres@127.0.0.1:1/test")

    # -- paging, buffering

    def test_timeline_paging_with_equal_times(self, pg: PostgresStore) -> None:
        p = pid()
        with pg.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.append_timeline(p, [entry(f"e{i}", float(i // 2)) for i in range(7)], 1.0)
        seen: list[str] = []
        before: tuple[float, str] | None = None
        while page := pg.timeline(p, 3, before):
            seen += [e.event_uid for e in page]
            before = (page[-1].time, page[-1].event_uid)
        assert seen == ["e6", "e5", "e4", "e3", "e2", "e1", "e0"]

    def test_writes_in_one_transaction_are_read_back(self, pg: PostgresStore) -> None:
        """Pending writes are sent before the reads that depend on them."""
        a, b = pid(), pid()
        with pg.transaction() as tx:
            tx.create_profile(a, 1.0)
            tx.create_profile(b, 1.0)
            tx.link(a, [("email", "a@x.io")], "e1", 1.0, "web")
            tx.link(b, [("user_id", "ub")], "e2", 1.0, "web")
            tx.append_timeline(a, [entry("e1", 1.0)], 1.0)
            tx.append_timeline(b, [entry("e2", 2.0), entry("e3", 3.0)], 2.0)
            tx.mark_applied(["e1", "e2"], 1.0)
            assert tx.applied(["e1", "e9"]) == {"e1"}
            assert tx.identifiers_of([a]) == {a: [("email", "a@x.io")]}
            tx.merge(a, [b], "e3", 3.0, "deterministic")
            got = tx.identifiers_of([a, b])
            assert sorted(got[a]) == [("email", "a@x.io"), ("user_id", "ub")]
            assert got[b] == []
            assert tx.lookup([("user_id", "ub")]) == {("user_id", "ub"): a}
        profile = pg.get_profile(a)
        assert profile is not None and profile.event_count == 3
        assert [e.event_uid for e in pg.timeline(a, 10)] == ["e3", "e2", "e1"]

    # -- the processor on top

    def test_processor_matches_sqlite_on_a_random_stream(
        self, pg: PostgresStore, tmp_path: Path
    ) -> None:
        """Same events, same batches, one thread: the same people, traits and counts."""
        people = make_people(40)
        events = make_events(people, 400, random.Random(7), duplicates=30)
        lite = SQLiteStore(tmp_path / "store.db")
        lite.migrate()
        try:
            for store in (pg, lite):
                processor = ProfileProcessor(default_config(), store)
                for start in range(0, len(events), 60):
                    processor.apply(events[start : start + 60])
            assert summary(pg, people) == summary(lite, people)
            assert pg.counts() == lite.counts()
        finally:
            lite.close()

    def test_four_threads_of_overlapping_events_make_one_profile_per_person(
        self, pg: PostgresStore
    ) -> None:
        """Each person's identifiers arrive spread over events that four workers apply at once."""
        people = make_people(60)
        events = make_events(people, 1200, random.Random(11), duplicates=100)
        rnd = random.Random(3)
        shares: list[list[Event]] = [[], [], [], []]
        for event in events:
            shares[rnd.randrange(4)].append(event)

        def run(share: list[Event]) -> None:
            processor = ProfileProcessor(default_config(), pg)
            for start in range(0, len(share), 50):
                processor.apply(share[start : start + 50], retries=10)

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(run, s) for s in shares]:
                future.result(timeout=300)
        unique = {e.uid for e in events}
        by_person = summary(pg, people)
        for person, (idents, _count, traits) in by_person.items():
            assert idents == sorted(people[person]), person
            assert traits.get("first_name") == person
        counts = pg.counts()
        assert counts["profiles"] == len(people)
        assert counts["identities"] == sum(len(v) for v in people.values())
        assert counts["events_applied"] == len(unique)
        assert sum(count for _, count, _ in by_person.values()) == len(unique)


def pg_key(store: PostgresStore, ident: Identifier) -> int:
    from tessera.store.postgres import _key

    return _key(store.schema.encode(), ident[0], ident[1])


def make_people(n: int) -> dict[str, list[Identifier]]:
    return {
        f"person{i}": [
            ("anonymous_id", f"anon-{i}"),
            ("email", f"p{i}@x.io"),
            ("phone", f"+1555555{i:04d}"),
            ("user_id", f"user-{i}"),
        ]
        for i in range(n)
    }


def make_events(
    people: dict[str, list[Identifier]], n: int, rnd: random.Random, duplicates: int = 0
) -> list[Event]:
    """Events that each carry one to three of a person's identifiers, in a random order.

    Each person also gets a chain of events linking their identifiers pairwise,
    so whatever the order, they all end up on one profile.
    """
    names = sorted(people)
    picks: list[tuple[str, list[Identifier]]] = []
    for name in names:
        ids = people[name]
        picks += [(name, [ids[k], ids[k + 1]]) for k in range(len(ids) - 1)]
    while len(picks) < n:
        name = rnd.choice(names)
        picks.append((name, rnd.sample(people[name], rnd.randint(1, 3))))
    out: list[Event] = []
    for i, (name, idents) in enumerate(picks):
        out.append(
            Event(
                id=f"ev{i}",
                source="test/crm",
                type="com.example.crm.contact.updated",
                time=1000.0 + i,
                received_at=1000.0 + i,
                source_name="crm",
                data={"first_name": name, "last_name": f"n{i}"},
                identifiers=idents,
            )
        )
    out += [rnd.choice(out) for _ in range(duplicates)]
    rnd.shuffle(out)
    return out


def summary(
    store: Store, people: dict[str, list[Identifier]]
) -> dict[str, tuple[list[Identifier], int, dict[str, Any]]]:
    """Per person: the identifiers on their profile, its event count and trait values."""
    out: dict[str, tuple[list[Identifier], int, dict[str, Any]]] = {}
    for name, idents in people.items():
        t, v = idents[0]
        profile_id = store.resolve(f"{t}:{v}")
        assert profile_id is not None, name
        profile = store.get_profile(profile_id)
        assert profile is not None
        out[name] = (
            sorted((i.type, i.value) for i in profile.identities),
            profile.event_count,
            {k: tr.value for k, tr in profile.traits.items()},
        )
    return out
