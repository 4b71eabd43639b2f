"""The personalization state in ``personalization.db`` (SQLite, WAL) in the data directory.

Its own file, not the store's: the personalization processor's commits never
wait for the profiles processor's and the other way round. The worker writes
it; the API reads it (profiles' segments, members, decisions).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from tessera import sqlitefile
from tessera.personalization.state.base import (
    OfferRecord,
    SavedAudience,
    State,
    StateTx,
    TraitStates,
)
from tessera.personalization.state.outbox import messages
from tessera.store.base import OutboxMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS pz_traits (
    profile_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (profile_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pz_due (profile_id TEXT PRIMARY KEY, due REAL NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pz_due_at ON pz_due (due);
CREATE TABLE IF NOT EXISTS pz_members (
    audience TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (audience, profile_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pz_members_profile ON pz_members (profile_id);
CREATE TABLE IF NOT EXISTS pz_offers (
    profile_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    action TEXT NOT NULL,
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (profile_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pz_applied (uid TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pz_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_audiences (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,        -- JSON: name, description, rule
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    evaluated TEXT                   -- the digest every profile was evaluated against
) WITHOUT ROWID;
"""

_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SQLiteStateTx(StateTx):
    """Membership changes are kept and written in bulk (before a read that needs them
    and at commit): a batch evaluation enters hundreds of thousands."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._enter: list[tuple[str, str, float]] = []
        self._leave: list[tuple[str, str]] = []

    def flush(self) -> None:
        if self._enter:
            self.conn.executemany("INSERT OR IGNORE INTO pz_members (audience, profile_id, "
                                  "since) VALUES (?, ?, ?)", self._enter)
            self._enter = []
        if self._leave:
            self.conn.executemany("DELETE FROM pz_members WHERE audience=? AND profile_id=?",
                                  self._leave)
            self._leave = []

    def applied(self, uids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in _chunks(list(uids)):
            rows = self.conn.execute(
                f"SELECT uid FROM pz_applied WHERE uid IN ({_marks(len(part))})", part)
            out.update(r[0] for r in rows)
        return out

    def mark_applied(self, uids: Sequence[str], at: float) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO pz_applied (uid, at) VALUES (?, ?)",
                              [(u, at) for u in uids])

    def lock(self, profile_ids: Sequence[str]) -> None:
        return None  # BEGIN IMMEDIATE: one writer at a time

    def trait_states(self, profile_ids: Iterable[str]) -> dict[str, TraitStates]:
        ids = sorted(set(profile_ids))
        out: dict[str, TraitStates] = {p: {} for p in ids}
        for part in _chunks(ids):
            rows = self.conn.execute(
                f"SELECT profile_id, name, state FROM pz_traits "
                f"WHERE profile_id IN ({_marks(len(part))})", part)
            for pid, name, state in rows:
                out[pid][name] = orjson.loads(state)
        return out

    def put_trait_states(self, profile_id: str, states: TraitStates) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO pz_traits (profile_id, name, state) VALUES (?, ?, ?)",
            [(profile_id, name, orjson.dumps(s)) for name, s in states.items()])

    def set_due(self, profile_id: str, due: float | None) -> None:
        if due is None:
            self.conn.execute("DELETE FROM pz_due WHERE profile_id=?", (profile_id,))
        else:
            self.conn.execute("INSERT OR REPLACE INTO pz_due (profile_id, due) VALUES (?, ?)",
                              (profile_id, due))

    def memberships(self, profile_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        self.flush()
        ids = sorted(set(profile_ids))
        out: dict[str, dict[str, float]] = {p: {} for p in ids}
        for part in _chunks(ids):
            rows = self.conn.execute(
                f"SELECT profile_id, audience, since FROM pz_members "
                f"WHERE profile_id IN ({_marks(len(part))})", part)
            for pid, audience, since in rows:
                out[pid][audience] = since
        return out

    def enter(self, audience: str, profile_id: str, since: float) -> None:
        if self._leave:
            self.flush()  # keep the order of a leave followed by an enter
        self._enter.append((audience, profile_id, since))

    def leave(self, audience: str, profile_id: str) -> None:
        if self._enter:
            self.flush()
        self._leave.append((audience, profile_id))

    def add_offers(self, records: Sequence[OfferRecord]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO pz_offers (profile_id, uid, action, channel, outcome, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.profile_id, r.uid, r.action, r.channel, r.outcome, r.at) for r in records])

    def offers(self, profile_ids: Iterable[str]) -> list[OfferRecord]:
        ids = sorted(set(profile_ids))
        out: list[OfferRecord] = []
        for part in _chunks(ids):
            rows = self.conn.execute(
                f"SELECT profile_id, uid, action, channel, outcome, at FROM pz_offers "
                f"WHERE profile_id IN ({_marks(len(part))}) ORDER BY at", part)
            out += [OfferRecord(*r) for r in rows]
        return out

    def forget_offers(self, profile_id: str, before: float) -> None:
        self.conn.execute("DELETE FROM pz_offers WHERE profile_id=? AND at<?",
                          (profile_id, before))

    def move(self, from_id: str, into_id: str) -> None:
        self.flush()
        self.conn.execute("INSERT OR IGNORE INTO pz_offers (profile_id, uid, action, channel, "
                          "outcome, at) SELECT ?, uid, action, channel, outcome, at "
                          "FROM pz_offers WHERE profile_id=?", (into_id, from_id))
        self.drop([from_id])

    def drop(self, profile_ids: Sequence[str]) -> None:
        self.flush()
        for part in _chunks(list(profile_ids)):
            marks = _marks(len(part))
            for table in ("pz_traits", "pz_due", "pz_members", "pz_offers"):
                self.conn.execute(f"DELETE FROM {table} WHERE profile_id IN ({marks})", part)

    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        self.conn.executemany(
            "INSERT INTO pz_outbox (topic, msg_id, key, payload) VALUES (?, ?, ?, ?)", messages)


class SQLiteState(sqlitefile.SchemaFile, State):
    def __init__(self, path: Path | str, synchronous: str | None = None) -> None:
        sqlitefile.SchemaFile.__init__(self, path, SCHEMA, synchronous)

    @contextmanager
    def transaction(self) -> Iterator[StateTx]:
        with self._lock:
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                tx = SQLiteStateTx(conn)
                yield tx
                tx.flush()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[StateTx]:
        """A deferred transaction on the WAL's last commit: no write lock is taken, so it
        neither waits for the writer of another process nor holds it back."""
        with self._lock:
            conn = self.conn()
            conn.execute("PRAGMA query_only=ON")
            try:
                conn.execute("BEGIN")
                try:
                    tx = SQLiteStateTx(conn)
                    yield tx
                    tx.flush()  # a membership change made in it: refused (query_only)
                finally:
                    conn.execute("ROLLBACK")
            finally:
                conn.execute("PRAGMA query_only=OFF")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self.conn().execute(sql, params).fetchall()

    def due(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT profile_id FROM pz_due WHERE due<=? ORDER BY due LIMIT ?", (now, limit))]

    def trait_states_of(self, profile_id: str) -> TraitStates:
        return {name: orjson.loads(s) for name, s in self._rows(
            "SELECT name, state FROM pz_traits WHERE profile_id=?", (profile_id,))}

    def memberships_of(self, profile_id: str) -> dict[str, float]:
        return dict(self._rows("SELECT audience, since FROM pz_members WHERE profile_id=?",
                               (profile_id,)))

    def offers_of(self, profile_id: str) -> list[OfferRecord]:
        return [OfferRecord(*r) for r in self._rows(
            "SELECT profile_id, uid, action, channel, outcome, at FROM pz_offers "
            "WHERE profile_id=? ORDER BY at", (profile_id,))]

    def members(self, audience: str, after: str | None, limit: int) -> list[tuple[str, float]]:
        return [(r[0], r[1]) for r in self._rows(
            "SELECT profile_id, since FROM pz_members WHERE audience=? AND profile_id>? "
            "ORDER BY profile_id LIMIT ?", (audience, after or "", limit))]

    def sizes(self) -> dict[str, int]:
        return dict(self._rows("SELECT audience, count(*) FROM pz_members GROUP BY audience"))

    def profile_ids(self) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT profile_id FROM pz_traits UNION SELECT profile_id FROM pz_members "
            "UNION SELECT profile_id FROM pz_offers UNION SELECT profile_id FROM pz_due "
            "ORDER BY 1")]

    def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        with self._lock:  # rows read one at a time: one of compact records holds up to 1000
            rows = self.conn().execute(
                "SELECT id, topic, msg_id, key, payload FROM pz_outbox ORDER BY id LIMIT ?",
                (limit,))
            try:
                return messages(rows, limit)
            finally:
                rows.close()

    def delete_outbox(self, ids: Sequence[int]) -> None:
        with self._lock:
            self.conn().executemany("DELETE FROM pz_outbox WHERE id=?", [(i,) for i in ids])

    def reset(self) -> None:
        with self.transaction() as tx:
            assert isinstance(tx, SQLiteStateTx)
            for table in ("pz_traits", "pz_due", "pz_members", "pz_offers", "pz_applied"):
                tx.conn.execute(f"DELETE FROM {table}")

    # -- saved audiences ----------------------------------------------------------------

    def saved_audiences(self) -> list[SavedAudience]:
        return [SavedAudience(name, orjson.loads(definition), digest, created, updated,
                              evaluated == digest)
                for name, definition, digest, created, updated, evaluated in self._rows(
                    "SELECT name, definition, digest, created_at, updated_at, evaluated "
                    "FROM pz_audiences ORDER BY name")]

    def save_audience(self, name: str, definition: dict[str, Any], digest: str,
                      at: float) -> bool:
        with self.transaction() as tx:
            assert isinstance(tx, SQLiteStateTx)
            found = tx.conn.execute("SELECT 1 FROM pz_audiences WHERE name=?",
                                    (name,)).fetchone()
            tx.conn.execute(
                "INSERT INTO pz_audiences (name, definition, digest, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "definition=excluded.definition, digest=excluded.digest, "
                "updated_at=excluded.updated_at", (name, orjson.dumps(definition), digest, at, at))
        return found is None

    def delete_audience(self, name: str) -> bool:
        with self._lock:
            return self.conn().execute("DELETE FROM pz_audiences WHERE name=?",
                                       (name,)).rowcount == 1

    def mark_evaluated(self, name: str, digest: str) -> None:
        with self._lock:
            self.conn().execute("UPDATE pz_audiences SET evaluated=? WHERE name=? AND digest=?",
                                (digest, name, digest))

    def audiences_version(self) -> tuple[int, float, int]:
        count, total, evaluated = self._rows(
            "SELECT count(*), coalesce(sum(updated_at), 0), "
            "count(*) FILTER (WHERE evaluated = digest) FROM pz_audiences")[0]
        return int(count), float(total), int(evaluated)

    @contextmanager
    def erasing(self) -> Iterator[None]:
        with self._lock:
            conn = self.conn()
            conn.execute("PRAGMA secure_delete=ON")  # overwrite deleted rows, not just unlink
            try:
                yield
            finally:
                conn.execute("PRAGMA secure_delete=OFF")
        sqlitefile.truncate_wal(self.path)  # the WAL still holds the pages as they were
