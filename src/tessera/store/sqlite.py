"""The embedded store: profiles in a SQLite file (WAL).

One write transaction at a time (SQLite's model, and the embedded processor's);
readers each get their own connection per thread and never wait for the writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from tessera import sqlitefile
from tessera.store.base import (
    Erased,
    Identifier,
    IdentityLink,
    MergeRecord,
    NewProfile,
    OutboxMessage,
    Profile,
    ProfileColumns,
    Store,
    StoreTx,
    TimelineEntry,
    Trait,
)
from tessera.store.outbox_pack import MARK, PackedMessages, messages, pack_records, split_row
from tessera.store.sqlite_columns import (
    PACKED_ROWS,
    Packed,
    pack_new_profiles,
    profile_tables,
    write_packed,
    write_tables,
)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    event_count INTEGER NOT NULL DEFAULT 0,
    merged_into TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identities (
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    event_uid TEXT NOT NULL,
    linked_at REAL NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (type, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_profile ON identities (profile_id);
-- merges redirect profiles that point at a merged one: find them without a scan
CREATE INDEX IF NOT EXISTS profiles_merged_into ON profiles (merged_into)
    WHERE merged_into IS NOT NULL;
CREATE TABLE IF NOT EXISTS traits (
    profile_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    source TEXT NOT NULL,
    time REAL NOT NULL,
    priority INTEGER NOT NULL,
    event_uid TEXT NOT NULL,
    PRIMARY KEY (profile_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timeline (
    profile_id TEXT NOT NULL,
    time REAL NOT NULL,
    event_uid TEXT NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    event BLOB NOT NULL
);
-- rows are appended in arrival order; the index alone carries the per-profile order
CREATE UNIQUE INDEX IF NOT EXISTS timeline_profile_time
    ON timeline (profile_id, time, event_uid);
CREATE TABLE IF NOT EXISTS merges (
    into_id TEXT NOT NULL,
    merged_id TEXT NOT NULL,
    event_uid TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS merges_into ON merges (into_id);
CREATE TABLE IF NOT EXISTS applied (
    event_uid TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


def _chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _erase_packed_outbox(conn: sqlite3.Connection, pids: Sequence[str]) -> None:
    """Take the messages naming any of ``pids`` out of the packed outbox rows that hold
    them, keeping the others' messages in their row and place (the row is deleted once
    none is left). A message names a profile when its template or its record holds the
    id: its key and payload are made of nothing else.
    The rewritten row replaces the old one in the same transaction, under the erasure's
    ``secure_delete``, so the old bytes are overwritten like a deleted row's."""
    needles = [pid.encode() for pid in pids]
    found = " OR ".join(["instr(payload, ?) > 0"] * len(needles))
    rows = conn.execute(f"SELECT id, payload FROM outbox WHERE substr(payload, 1, ?) = ? "
                        f"AND ({found})", [len(MARK), MARK, *needles]).fetchall()
    for id_, payload in rows:
        head, recs = split_row(payload)
        kept: list[str] = []
        if not any(n in head for n in needles):  # in the template: every message names it
            # else a message names a profile only through its record (an id is whole in
            # one field or in the template: the rule of outbox_pack)
            kept = [rec for rec in recs if not any(pid in rec for pid in pids)]
        if kept:
            conn.execute("UPDATE outbox SET payload=? WHERE id=?",
                         (pack_records(head, kept), id_))
        else:
            conn.execute("DELETE FROM outbox WHERE id=?", (id_,))


class SQLiteTx(StoreTx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(event_uids)):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.conn.execute(
                    f"SELECT event_uid FROM applied WHERE event_uid IN ({marks})", chunk
                )
            )
        return found

    def mark_applied(self, event_uids: Sequence[str], at: float) -> None:
        if len(event_uids) >= PACKED_ROWS:
            p = Packed()
            exprs = [f"{p.text(event_uids)} AS u", p.const(at)]
            if p.usable:
                p.insert(self.conn, "INSERT INTO applied (event_uid, at)", exprs,
                         len(event_uids), "u")
                return
        self.conn.executemany(
            "INSERT INTO applied (event_uid, at) VALUES (?, ?)", [(uid, at) for uid in event_uids]
        )

    single_writer = True

    def lock_identifiers(self, identifiers: Sequence[Identifier]) -> None:
        """SQLite has one writer at a time: the transaction itself is the lock."""

    def lock_profiles(self, profile_ids: Sequence[str]) -> None:
        """SQLite has one writer at a time: the transaction itself is the lock."""

    def lookup(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        out: dict[Identifier, str] = {}
        execute = self.conn.execute
        if len(identifiers) > 16:  # a chunk's identifiers: one primary-key join per 500
            for chunk in _chunks(list(identifiers)):
                rows = ",".join(["(?,?)"] * len(chunk))
                for type_, value, pid in execute(
                        f"WITH v(t, val) AS (VALUES {rows}) SELECT i.type, i.value, i.profile_id "
                        f"FROM v CROSS JOIN identities i ON i.type = v.t AND i.value = v.val",
                        [x for ident in chunk for x in ident]):
                    out[(type_, value)] = pid
            return out
        for ident in identifiers:
            row = execute(
                "SELECT profile_id FROM identities WHERE type=? AND value=?", ident
            ).fetchone()
            if row is not None:
                out[ident] = row[0]
        return out

    def identifiers_of(self, profile_ids: Iterable[str]) -> dict[str, list[Identifier]]:
        ids = list(profile_ids)
        out: dict[str, list[Identifier]] = {pid: [] for pid in ids}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for pid, type_, value in self.conn.execute(
                f"SELECT profile_id, type, value FROM identities WHERE profile_id IN ({marks})",
                chunk,
            ):
                out[pid].append((type_, value))
        return out

    def create_profile(self, profile_id: str, at: float) -> None:
        self.conn.execute(
            "INSERT INTO profiles (id, created_at, updated_at) VALUES (?, ?, ?)",
            (profile_id, at, at),
        )

    def link(
        self,
        profile_id: str,
        identifiers: Sequence[Identifier],
        event_uid: str,
        at: float,
        source: str,
        reason: str = "deterministic",
    ) -> None:
        self.conn.executemany(
            "INSERT INTO identities (type, value, profile_id, event_uid, linked_at, source, "
            "reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(t, v, profile_id, event_uid, at, source, reason) for t, v in identifiers],
        )

    def merge(
        self, into: str, merged: Sequence[str], event_uid: str, at: float, reason: str
    ) -> None:
        for pid in merged:
            self.conn.execute("UPDATE identities SET profile_id=? WHERE profile_id=?", (into, pid))
            self.conn.execute("UPDATE timeline SET profile_id=? WHERE profile_id=?", (into, pid))
            self.conn.execute("UPDATE profiles SET merged_into=? WHERE merged_into=?", (into, pid))
            row = self.conn.execute(
                "SELECT event_count, created_at FROM profiles WHERE id=?", (pid,)
            ).fetchone()
            self.conn.execute(
                "UPDATE profiles SET merged_into=?, event_count=0, updated_at=? WHERE id=?",
                (into, at, pid),
            )
            self.conn.execute(
                "UPDATE profiles SET event_count=event_count+?, created_at=min(created_at, ?), "
                "updated_at=? WHERE id=?",
                (row[0], row[1], at, into),
            )
            self.conn.execute(
                "INSERT INTO merges (into_id, merged_id, event_uid, at, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (into, pid, event_uid, at, reason),
            )
            self.conn.execute("UPDATE merges SET into_id=? WHERE into_id=?", (into, pid))

    def traits(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Trait]]:
        ids = list(profile_ids)
        out: dict[str, dict[str, Trait]] = {pid: {} for pid in ids}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for pid, name, value, source, t, prio, uid in self.conn.execute(
                f"SELECT profile_id, name, value, source, time, priority, event_uid "
                f"FROM traits WHERE profile_id IN ({marks})",
                chunk,
            ):
                out[pid][name] = Trait(orjson.loads(value), source, t, prio, uid)
        return out

    def put_traits(self, profile_id: str, traits: dict[str, Trait]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO traits (profile_id, name, value, source, time, priority, "
            "event_uid) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (profile_id, name, orjson.dumps(t.value), t.source, t.time, t.priority, t.event_uid)
                for name, t in traits.items()
            ],
        )

    def delete_traits(self, profile_ids: Sequence[str]) -> None:
        self.conn.executemany(
            "DELETE FROM traits WHERE profile_id=?", [(pid,) for pid in profile_ids]
        )

    def append_timeline(self, profile_id: str, entries: Sequence[TimelineEntry], at: float) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO timeline (profile_id, time, event_uid, type, source, "
            "received_at, event) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    profile_id,
                    e.time,
                    e.event_uid,
                    e.type,
                    e.source,
                    e.received_at,
                    orjson.dumps(e.event),
                )
                for e in entries
            ],
        )
        self.conn.execute(
            "UPDATE profiles SET event_count=event_count+?, updated_at=? WHERE id=?",
            (len(entries), at, profile_id),
        )

    def create_profiles(self, profiles: Sequence[NewProfile], at: float) -> None:
        """One ``executemany`` per table for the batch (see :meth:`StoreTx.create_profiles`)."""
        ex = self.conn.executemany
        ex("INSERT INTO profiles (id, created_at, updated_at, event_count) VALUES (?, ?, ?, 1)",
           [(p.id, at, at) for p in profiles])
        ex("INSERT INTO identities (type, value, profile_id, event_uid, linked_at, source, "
           "reason) VALUES (?, ?, ?, ?, ?, ?, 'deterministic')",
           [(t, v, p.id, p.event_uid, at, p.source) for p in profiles for t, v in p.identifiers])
        ex("INSERT OR REPLACE INTO traits (profile_id, name, value, source, time, priority, "
           "event_uid) VALUES (?, ?, ?, ?, ?, ?, ?)",
           [(p.id, n, orjson.dumps(t.value), t.source, t.time, t.priority, t.event_uid)
            for p in profiles for n, t in p.traits.items()])
        ex("INSERT OR IGNORE INTO timeline (profile_id, time, event_uid, type, source, "
           "received_at, event) VALUES (?, ?, ?, ?, ?, ?, ?)",
           [(p.id, p.entry.time, p.entry.event_uid, p.entry.type, p.entry.source,
             p.entry.received_at, orjson.dumps(p.entry.event)) for p in profiles])

    def create_profile_columns(self, columns: ProfileColumns, at: float) -> None:
        """One ``INSERT ... SELECT`` per table from packed columns
        (:func:`.sqlite_columns.profile_tables`); where a column cannot be packed,
        :meth:`create_profiles`."""
        tables = profile_tables(columns, at)
        if tables is None:
            super().create_profile_columns(columns, at)  # NewProfile objects, executemany
        else:
            write_tables(self.conn, tables)

    def create_packed_profiles(self, packed: Any) -> bool:
        return write_packed(self.conn, packed)

    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        if len(messages) >= PACKED_ROWS:
            p = Packed()
            topics, ids, keys, payloads = (list(c) for c in zip(*messages, strict=True))
            exprs = [p.text(topics), p.text(ids), p.text(keys), p.text(payloads, blob=True)]
            if p.usable:  # in the order given: the outbox id is the relay's order
                p.insert(self.conn, "INSERT INTO outbox (topic, message_id, key, payload)",
                         exprs, len(messages))
                return
        self.conn.executemany(
            "INSERT INTO outbox (topic, message_id, key, payload) VALUES (?, ?, ?, ?)", messages
        )

    def add_outbox_packed(self, packed: PackedMessages) -> None:
        """One outbox row per packed row (:mod:`tessera.store.outbox_pack`), message id and
        key empty: ``pending_outbox`` spells the messages out when the relay reads them."""
        if packed.rows:
            topic = packed.template.topic
            self.conn.executemany(
                "INSERT INTO outbox (topic, message_id, key, payload) VALUES (?, '', '', ?)",
                [(topic, row) for row in packed.rows])

    def split(
        self,
        profile_id: str,
        into_id: str,
        identifiers: Sequence[Identifier],
        event_uids: Sequence[str],
        at: float,
    ) -> None:
        row = self.conn.execute("SELECT merged_into FROM profiles WHERE id=?",
                                (into_id,)).fetchone()
        if row is None:
            self.create_profile(into_id, at)
        else:
            self.conn.execute("UPDATE profiles SET merged_into=NULL, updated_at=? WHERE id=?",
                              (at, into_id))
            self.conn.execute("DELETE FROM merges WHERE merged_id=?", (into_id,))
        self.conn.executemany(
            "UPDATE identities SET profile_id=? WHERE type=? AND value=? AND profile_id=?",
            [(into_id, t, v, profile_id) for t, v in identifiers])
        self.conn.executemany(
            "UPDATE timeline SET profile_id=? WHERE profile_id=? AND event_uid=?",
            [(into_id, profile_id, uid) for uid in event_uids])
        for pid in (profile_id, into_id):
            self.conn.execute(
                "UPDATE profiles SET event_count=(SELECT count(*) FROM timeline "
                "WHERE profile_id=?), updated_at=? WHERE id=?", (pid, at, pid))


    def replace_events(self, profile_id: str, events: dict[str, dict[str, Any]]) -> int:
        found = 0
        for uid, event in events.items():
            found += self.conn.execute(
                "UPDATE timeline SET event=? WHERE profile_id=? AND event_uid=?",
                (orjson.dumps(event), profile_id, uid)).rowcount
        return found


class SQLiteStore(Store):
    fast_local_reads = True
    def __init__(self, path: Path | str, synchronous: str | None = None) -> None:
        self.path = Path(path)
        self.synchronous = synchronous or os.environ.get("TESSERA_SQLITE_SYNCHRONOUS", "FULL")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._migrated = False
        self._checkpointer = sqlitefile.Checkpointer(self.path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlitefile.connect(self.path, self.synchronous)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self._migrated:
                self.migrate()
            conn = self._connect()
            self._local.conn = conn
        return conn

    def migrate(self) -> None:
        conn = self._connect()
        try:
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        finally:
            conn.close()
        self._migrated = True

    def column_packer(self) -> Callable[[ProfileColumns, float], Any] | None:
        return pack_new_profiles

    @contextmanager
    def transaction(self) -> Iterator[StoreTx]:
        with self._write_lock:
            self._checkpointer.start()  # this process writes: it keeps the WAL short
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        conn = self._conn()  # autocommit reads: a snapshot of what is committed, no lock
        found: set[str] = set()
        for chunk in _chunks(list(event_uids)):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in conn.execute(
                f"SELECT event_uid FROM applied WHERE event_uid IN ({marks})", chunk))
        return found

    def resolve(self, identifier: str) -> str | None:
        conn = self._conn()
        type_, sep, value = identifier.partition(":")
        if sep:
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE type=? AND value=?", (type_, value)
            ).fetchone()
            return row[0] if row else None
        row = conn.execute(
            "SELECT id, merged_into FROM profiles WHERE id=?", (identifier,)
        ).fetchone()
        if row is None:
            return None
        return row[1] or row[0]

    def get_profile(self, profile_id: str) -> Profile | None:
        conn = self._conn()
        row = conn.execute(
            "SELECT id, created_at, updated_at, event_count FROM profiles "
            "WHERE id=? AND merged_into IS NULL",
            (profile_id,),
        ).fetchone()
        if row is None:
            return None
        profile = Profile(id=row[0], created_at=row[1], updated_at=row[2], event_count=row[3])
        for name, value, source, t, prio, uid in conn.execute(
            "SELECT name, value, source, time, priority, event_uid FROM traits "
            "WHERE profile_id=? ORDER BY name",
            (profile_id,),
        ):
            profile.traits[name] = Trait(orjson.loads(value), source, t, prio, uid)
        profile.identities = [
            IdentityLink(*r)
            for r in conn.execute(
                "SELECT type, value, profile_id, event_uid, linked_at, source, reason "
                "FROM identities WHERE profile_id=? ORDER BY linked_at, type, value",
                (profile_id,),
            )
        ]
        profile.merged_from = [
            MergeRecord(*r)
            for r in conn.execute(
                "SELECT into_id, merged_id, event_uid, at, reason FROM merges WHERE into_id=? "
                "ORDER BY at",
                (profile_id,),
            )
        ]
        return profile

    def timeline(
        self, profile_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[TimelineEntry]:
        sql = (
            "SELECT event_uid, type, source, time, received_at, event FROM timeline "
            "WHERE profile_id=?"
        )
        params: list[Any] = [profile_id]
        if before is not None:
            sql += " AND (time < ? OR (time = ? AND event_uid < ?))"
            params += [before[0], before[0], before[1]]
        sql += " ORDER BY time DESC, event_uid DESC LIMIT ?"
        params.append(limit)
        return [
            TimelineEntry(uid, type_, src, t, rcv, orjson.loads(ev))
            for uid, type_, src, t, rcv, ev in self._conn().execute(sql, params)
        ]

    def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        """Every message of the first rows, in order, each with its row's id; rows are read
        one at a time until ``limit`` messages are there. A packed row gives all its
        messages or none: the relay deletes what it published by row id."""
        out: list[OutboxMessage] = []
        rows = self._conn().execute(
            "SELECT id, topic, message_id, key, payload FROM outbox ORDER BY id LIMIT ?",
            (limit,))
        try:
            for id_, topic, msg_id, key, payload in rows:
                if len(out) >= limit:
                    break
                if payload.startswith(MARK):
                    out += [OutboxMessage(id_, *m) for m in messages(payload)]
                else:
                    out.append(OutboxMessage(id_, topic, msg_id, key, payload))
        finally:
            rows.close()  # an open statement would hold its read snapshot
        return out

    def delete_outbox(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._write_lock:
            conn = self._conn()
            # A relayed row whose deletion a power cut undoes is relayed again and
            # deduplicated by the bus, so this commit need not wait for the disk.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")  # one transaction for all of them
            try:
                for chunk in _chunks(list(dict.fromkeys(ids))):  # a packed row's, repeated
                    conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})",
                                 chunk)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")

    def counts(self) -> dict[str, int]:
        conn = self._conn()

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        return {
            "profiles": one("SELECT count(*) FROM profiles WHERE merged_into IS NULL"),
            "identities": one("SELECT count(*) FROM identities"),
            "events_applied": one("SELECT count(*) FROM applied"),
            "merges": one("SELECT count(*) FROM merges"),
        }

    def reset(self) -> None:
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table in ("profiles", "identities", "traits", "timeline", "merges",
                              "applied", "outbox"):
                    conn.execute(f"DELETE FROM {table}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def iter_profile_ids(self) -> Iterator[str]:
        for (pid,) in self._conn().execute(
            "SELECT id FROM profiles WHERE merged_into IS NULL ORDER BY id"
        ):
            yield pid

    def trait_values(self, names: Sequence[str], page: int = 5000
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
        """One statement (so one snapshot): live profiles in id order, each joined with its
        wanted traits by the traits table's primary key (profile_id, name); no sort."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        marks = ",".join("?" * len(wanted))
        loads = orjson.loads
        current: str | None = None
        values: dict[str, Any] = {}
        for pid, name, value in self._conn().execute(
                f"SELECT p.id, t.name, t.value FROM profiles p JOIN traits t "
                f"ON t.profile_id = p.id AND t.name IN ({marks}) "
                f"WHERE p.merged_into IS NULL ORDER BY p.id", wanted):
            if pid != current:
                if current is not None:
                    yield current, values
                current, values = pid, {}
            values[name] = loads(value)
        if current is not None:
            yield current, values

    def changed_profiles(self, since: float) -> list[str]:
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM profiles WHERE updated_at > ? ORDER BY id", (since,))]

    def timeline_uids(self, profile_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {pid: [] for pid in profile_ids}
        conn = self._conn()
        for chunk in _chunks(list(profile_ids)):
            marks = ",".join("?" * len(chunk))
            # the (profile_id, time, event_uid) index answers this alone
            for pid, uid in conn.execute(
                    f"SELECT profile_id, event_uid FROM timeline WHERE profile_id IN ({marks}) "
                    f"ORDER BY profile_id, time DESC, event_uid DESC", chunk):
                out[pid].append(uid)
        return out

    def timeline_entries(self, profile_id: str, event_uids: Sequence[str]) -> list[TimelineEntry]:
        found: list[TimelineEntry] = []
        conn = self._conn()
        for chunk in _chunks(list(event_uids)):
            marks = ",".join("?" * len(chunk))
            found += [TimelineEntry(uid, type_, src, t, rcv, orjson.loads(ev))
                      for uid, type_, src, t, rcv, ev in conn.execute(
                          f"SELECT event_uid, type, source, time, received_at, event "
                          f"FROM timeline WHERE profile_id=? AND event_uid IN ({marks})",
                          [profile_id, *chunk])]
        found.sort(key=lambda e: (e.time, e.event_uid), reverse=True)
        return found

    def erase(self, profile_id: str, anonymize: bool = False) -> Erased:
        with self._write_lock:
            conn = self._conn()
            # deleted rows and freed pages are overwritten with zeros, not just unlinked
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                erased = self._erase(conn, profile_id, anonymize)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute("PRAGMA secure_delete=OFF")
        if erased.profile_ids:
            sqlitefile.truncate_wal(self.path)  # the WAL still holds the pages as they were
        return erased

    @staticmethod
    def _erase(conn: sqlite3.Connection, profile_id: str, anonymize: bool) -> Erased:
        live = conn.execute("SELECT 1 FROM profiles WHERE id=? AND merged_into IS NULL",
                            (profile_id,)).fetchone()
        if live is None:
            return Erased([], [], [])
        pids = [profile_id] + [r[0] for r in conn.execute(
            "SELECT id FROM profiles WHERE merged_into=? ORDER BY id", (profile_id,))]
        identifiers: list[Identifier] = [(t, v) for t, v in conn.execute(
            "SELECT type, value FROM identities WHERE profile_id=? ORDER BY type, value",
            (profile_id,))]
        uids = [r[0] for r in conn.execute(
            "SELECT event_uid FROM timeline WHERE profile_id=? ORDER BY time, event_uid",
            (profile_id,))]
        conn.execute("DELETE FROM identities WHERE profile_id=?", (profile_id,))
        marks = ",".join("?" * len(pids))
        conn.execute(f"DELETE FROM traits WHERE profile_id IN ({marks})", pids)
        _erase_packed_outbox(conn, pids)
        for pid in pids:
            conn.execute("DELETE FROM outbox WHERE (key=? OR instr(payload, ?) > 0) "
                         "AND substr(payload, 1, ?) != ?",
                         (pid, pid.encode(), len(MARK), MARK))
        if anonymize:
            conn.execute("UPDATE timeline SET event=? WHERE profile_id=?", (b"{}", profile_id))
        else:
            conn.execute("DELETE FROM timeline WHERE profile_id=?", (profile_id,))
            conn.execute(f"DELETE FROM merges WHERE into_id IN ({marks}) "
                         f"OR merged_id IN ({marks})", pids + pids)
            conn.execute(f"DELETE FROM profiles WHERE id IN ({marks})", pids)
        return Erased(pids, identifiers, uids)

    def close(self) -> None:
        self._checkpointer.stop()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

