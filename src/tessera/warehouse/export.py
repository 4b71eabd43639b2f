"""Copying the store and the segment memberships into the warehouse: full or incremental.

A full export replaces every table. An incremental one asks the store which
profiles changed since the last export's high-water mark
(:meth:`Store.changed_profiles`: creating, new events, merges, splits and
SQL traits all set a profile's ``updated_at``) and rewrites only what differs
for them: rows are compared whole in DuckDB, so a profile that changed in one
trait writes one trait row. Events are matched by uid: new ones are fetched,
ones a merge or an unmerge moved get their new profile id, vanished ones go.
Memberships have no change time in their state (an exit deletes the row), so
they are read whole and only the difference is written.

The mark is the time the export started reading; the next export reads from
``mark - overlap``, so a transaction that took its timestamp before the mark
but committed after it (another worker's) is still seen. Re-reading a changed
profile twice writes nothing, because only differences are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa

from tessera.store.base import Profile, Store

TABLES = {
    "profiles": "profile_id VARCHAR, created_at DOUBLE, updated_at DOUBLE, event_count BIGINT",
    "traits": "profile_id VARCHAR, name VARCHAR, value JSON, source VARCHAR, time DOUBLE, "
              "priority INTEGER, event_uid VARCHAR",
    "identities": "profile_id VARCHAR, type VARCHAR, value VARCHAR, event_uid VARCHAR, "
                  "linked_at DOUBLE, source VARCHAR, reason VARCHAR",
    "merges": "profile_id VARCHAR, merged_id VARCHAR, event_uid VARCHAR, merged_at DOUBLE, "
              "reason VARCHAR",
    "events": "profile_id VARCHAR, event_uid VARCHAR, type VARCHAR, source VARCHAR, "
              "time DOUBLE, received_at DOUBLE, event JSON",
    "segment_memberships": "profile_id VARCHAR, segment VARCHAR, entered_at DOUBLE",
}
PROFILE_TABLES = ("profiles", "traits", "identities", "merges")
"""Tables whose rows a profile read gives whole (compared row by row)."""
MARKED = (*PROFILE_TABLES, "events")
"""Tables fed by the store's change feed: each keeps a high-water mark."""
CHUNK = 2000
DAY = "strftime(to_timestamp(time), '%Y-%m-%d')"


class Memberships(Protocol):
    """What the export needs of the personalization state (its public reads)."""

    def sizes(self) -> dict[str, int]: ...

    def members(self, audience: str, after: str | None, limit: int) -> list[tuple[str, float]]: ...


@dataclass(slots=True)
class Changes:
    """What an export wrote: rows inserted, updated or deleted per table."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    partitions: set[tuple[str, str]] = field(default_factory=set)
    """Event partitions (day, type) whose content changed."""


def columns(table: str) -> list[str]:
    return [c.strip().split(" ")[0] for c in TABLES[table].split(",")]


def membership_rows(source: Memberships) -> Iterator[tuple[str, str, float]]:
    for audience in sorted(source.sizes()):
        after: str | None = None
        while True:
            page = source.members(audience, after, 1000)
            for pid, since in page:
                yield pid, audience, since
            if len(page) < 1000:
                break
            after = page[-1][0]


def profile_rows(profile: Profile) -> dict[str, list[tuple[Any, ...]]]:
    p = profile
    return {
        "profiles": [(p.id, p.created_at, p.updated_at, p.event_count)],
        "traits": [(p.id, n, orjson.dumps(t.value).decode(), t.source, t.time, t.priority,
                    t.event_uid) for n, t in p.traits.items()],
        "identities": [(p.id, i.type, i.value, i.event_uid, i.linked_at, i.source, i.reason)
                       for i in p.identities],
        "merges": [(p.id, m.merged, m.event_uid, m.at, m.reason) for m in p.merged_from],
    }


def event_row(pid: str, e: Any) -> tuple[Any, ...]:
    return (pid, e.event_uid, e.type, e.source, e.time, e.received_at,
            orjson.dumps(e.event).decode())


def read_profiles(store: Store, pids: Sequence[str]) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """The profile tables' rows of these profiles (merged-away ones have none), in chunks."""
    for start in range(0, len(pids), CHUNK):
        batch: dict[str, list[tuple[Any, ...]]] = {t: [] for t in PROFILE_TABLES}
        for pid in pids[start:start + CHUNK]:
            profile = store.get_profile(pid)
            if profile is not None:
                for table, rows in profile_rows(profile).items():
                    batch[table] += rows
        yield batch


class Loader:
    """Rows into DuckDB through Arrow (one statement per chunk, not one per row)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def insert(self, table: str, rows: Sequence[tuple[Any, ...]],
               into: str | None = None) -> None:
        if not rows:
            return
        names = columns(table)
        arrow = pa.table({n: list(col) for n, col in zip(names, zip(*rows, strict=True),
                                                         strict=True)})
        self.conn.register("_rows", arrow)
        try:
            self.conn.execute(f"INSERT INTO {into or table} SELECT * FROM _rows")
        finally:
            self.conn.unregister("_rows")

    def stage(self, table: str, name: str) -> None:
        self.conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({TABLES[table]})")

    def ids(self, name: str, ids: Iterable[str]) -> None:
        self.conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} (id VARCHAR PRIMARY KEY)")
        chunk: list[str] = []
        for pid in ids:
            chunk.append(pid)
            if len(chunk) >= 50_000:
                self._ids(name, chunk)
                chunk = []
        self._ids(name, chunk)

    def _ids(self, name: str, ids: list[str]) -> None:
        if ids:
            self.conn.register("_ids", pa.table({"id": ids}))
            try:
                self.conn.execute(f"INSERT INTO {name} SELECT DISTINCT id FROM _ids")
            finally:
                self.conn.unregister("_ids")


def full_export(conn: Any, store: Store, memberships: Memberships | None) -> None:
    """Replace every table with what the store (and the state) hold now."""
    load = Loader(conn)
    for table, spec in TABLES.items():
        if table != "segment_memberships" or memberships is not None:
            conn.execute(f"CREATE OR REPLACE TABLE {table} ({spec})")
    ids = list(store.iter_profile_ids())
    for start, batch in zip(range(0, len(ids), CHUNK), read_profiles(store, ids), strict=True):
        for table, rows in batch.items():
            load.insert(table, rows)
        events: list[tuple[Any, ...]] = []
        for pid in ids[start:start + CHUNK]:
            before: tuple[float, str] | None = None
            while True:
                page = store.timeline(pid, 1000, before)
                events += [event_row(pid, e) for e in page]
                if len(page) < 1000:
                    break
                before = (page[-1].time, page[-1].event_uid)
        load.insert("events", events)
    if memberships is not None:
        _load_memberships(load, memberships, "segment_memberships")


def _load_memberships(load: Loader, source: Memberships, into: str) -> None:
    rows: list[tuple[Any, ...]] = []
    for row in membership_rows(source):
        rows.append(row)
        if len(rows) >= CHUNK * 10:
            load.insert("segment_memberships", rows, into)
            rows = []
    load.insert("segment_memberships", rows, into)


def _same(table: str, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in columns(table))


def _count(conn: Any, sql: str, params: Sequence[Any] = ()) -> int:
    row = conn.execute(sql, list(params)).fetchone()
    return int(row[0]) if row else 0


def sync_rows(conn: Any, table: str, staged: str, scope: str | None) -> int:
    """Make ``table`` hold ``staged``'s rows where ``scope`` (a temp table of profile ids)
    says; rows equal to what is there are left alone. Returns the rows written."""
    where = f"profile_id IN (SELECT id FROM {scope})" if scope else "TRUE"
    gone = _count(conn, f"SELECT count(*) FROM {table} t WHERE {where} AND NOT EXISTS "
                        f"(SELECT 1 FROM {staged} s WHERE {_same(table, 't', 's')})")
    if gone:
        conn.execute(f"DELETE FROM {table} t WHERE {where} AND NOT EXISTS "
                     f"(SELECT 1 FROM {staged} s WHERE {_same(table, 't', 's')})")
    new = _count(conn, f"SELECT count(*) FROM {staged} s WHERE NOT EXISTS "
                       f"(SELECT 1 FROM {table} t WHERE {_same(table, 't', 's')})")
    if new:
        conn.execute(f"INSERT INTO {table} SELECT * FROM {staged} s WHERE NOT EXISTS "
                     f"(SELECT 1 FROM {table} t WHERE {_same(table, 't', 's')})")
    return gone + new


def incremental_export(conn: Any, store: Store, since: float,
                       memberships: Memberships | None) -> Changes:
    """Write only what changed for the profiles the store reports changed after ``since``."""
    load = Loader(conn)
    changes = Changes()
    changed = store.changed_profiles(since)
    load.ids("_changed", changed)
    for table in PROFILE_TABLES:
        load.stage(table, f"_new_{table}")
    for batch in read_profiles(store, changed):
        for table, rows in batch.items():
            load.insert(table, rows, f"_new_{table}")
    for table in PROFILE_TABLES:
        changes.written[table] = sync_rows(conn, table, f"_new_{table}", "_changed")
    _sync_events(conn, load, store, changed, changes)
    # profiles no longer in the store at all (a rebuild from the log made new ones)
    load.ids("_live", store.iter_profile_ids())
    for table in (*PROFILE_TABLES, "events", "segment_memberships"):
        where = "profile_id NOT IN (SELECT id FROM _live)"
        if table == "events":
            changes.partitions |= _partitions(conn, where)
        n = _count(conn, f"SELECT count(*) FROM {table} WHERE {where}")
        if n:
            conn.execute(f"DELETE FROM {table} WHERE {where}")
            changes.written[table] += n
    if memberships is not None:
        load.stage("segment_memberships", "_new_memberships")
        _load_memberships(load, memberships, "_new_memberships")
        changes.written["segment_memberships"] += sync_rows(
            conn, "segment_memberships", "_new_memberships", None)
    for name in ("_changed", "_live", "_uids", "_new_memberships",
                 *(f"_new_{t}" for t in PROFILE_TABLES)):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
    return changes


def _partitions(conn: Any, where: str) -> set[tuple[str, str]]:
    return {(d, t) for d, t in conn.execute(
        f"SELECT DISTINCT {DAY}, type FROM events WHERE {where}").fetchall()}


def _sync_events(conn: Any, load: Loader, store: Store, changed: Sequence[str],
                 changes: Changes) -> None:
    conn.execute("CREATE OR REPLACE TEMP TABLE _uids (profile_id VARCHAR, event_uid VARCHAR)")
    for start in range(0, len(changed), CHUNK):
        part = store.timeline_uids(changed[start:start + CHUNK])
        pairs = [(pid, uid) for pid, uids in part.items() for uid in uids]
        if pairs:
            conn.register("_u", pa.table({"profile_id": [r[0] for r in pairs],
                                          "event_uid": [r[1] for r in pairs]}))
            try:
                conn.execute("INSERT INTO _uids SELECT * FROM _u")
            finally:
                conn.unregister("_u")
    moved = ("event_uid IN (SELECT u.event_uid FROM _uids u JOIN events e "
             "ON e.event_uid = u.event_uid AND e.profile_id <> u.profile_id)")
    n = _count(conn, f"SELECT count(*) FROM events WHERE {moved}")
    if n:
        changes.partitions |= _partitions(conn, moved)
        conn.execute("UPDATE events SET profile_id = u.profile_id FROM _uids u "
                     "WHERE events.event_uid = u.event_uid AND events.profile_id <> u.profile_id")
    gone = ("profile_id IN (SELECT id FROM _changed) AND event_uid NOT IN "
            "(SELECT event_uid FROM _uids)")
    m = _count(conn, f"SELECT count(*) FROM events WHERE {gone}")
    if m:
        changes.partitions |= _partitions(conn, gone)
        conn.execute(f"DELETE FROM events WHERE {gone}")
    missing: dict[str, list[str]] = {}
    for pid, uid in conn.execute("SELECT profile_id, event_uid FROM _uids u WHERE NOT EXISTS "
                                 "(SELECT 1 FROM events e WHERE e.event_uid = u.event_uid) "
                                 "ORDER BY profile_id").fetchall():
        missing.setdefault(pid, []).append(uid)
    rows: list[tuple[Any, ...]] = []
    for pid, uids in missing.items():
        rows += [event_row(pid, e) for e in store.timeline_entries(pid, uids)]
        if len(rows) >= CHUNK * 5:
            load.insert("events", rows)
            changes.partitions |= _row_partitions(conn, rows)
            rows = []
    load.insert("events", rows)
    changes.partitions |= _row_partitions(conn, rows)
    changes.written["events"] = n + m + sum(len(u) for u in missing.values())


def _row_partitions(conn: Any, rows: Sequence[tuple[Any, ...]]) -> set[tuple[str, str]]:
    if not rows:
        return set()
    arrow = pa.table({"time": [r[4] for r in rows], "type": [r[2] for r in rows]})
    conn.register("_p", arrow)
    try:
        return {(d, t) for d, t in conn.execute(
            f"SELECT DISTINCT {DAY}, type FROM _p").fetchall()}
    finally:
        conn.unregister("_p")
