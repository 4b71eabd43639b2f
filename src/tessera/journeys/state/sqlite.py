"""Journey state in ``activation.db`` (SQLite, WAL) in the data directory: the embedded
default. One writer at a time (``BEGIN IMMEDIATE``), so a transaction already
holds everything and :meth:`~JourneyTx.lock` and friends have nothing to wait for.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from tessera import sqlitefile
from tessera.journeys.state.base import (
    Instance,
    JourneyState,
    JourneyTx,
    Outboxed,
    StepMetrics,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS journey_instances (
    id TEXT PRIMARY KEY,
    journey TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    slot TEXT NOT NULL,
    status TEXT NOT NULL,            -- active, completed, exited
    step TEXT NOT NULL,
    waiting TEXT,                    -- timer, event or NULL
    entered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    context BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS journey_one_active
    ON journey_instances (journey, slot) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS journey_by_profile ON journey_instances (profile_id, status);
CREATE TABLE IF NOT EXISTS journey_timers (
    instance_id TEXT NOT NULL,
    step TEXT NOT NULL,
    fire_at REAL NOT NULL,
    PRIMARY KEY (instance_id, step)
);
CREATE INDEX IF NOT EXISTS journey_timers_due ON journey_timers (fire_at);
CREATE TABLE IF NOT EXISTS journey_metrics (
    journey TEXT NOT NULL,
    step TEXT NOT NULL,
    entered INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    exited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (journey, step)
);
CREATE TABLE IF NOT EXISTS journey_applied (uid TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS journey_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


def _instance(row: tuple[Any, ...]) -> Instance:
    return Instance(id=row[0], journey=row[1], profile_id=row[2], slot=row[3], status=row[4],
                    step=row[5], waiting=row[6], entered_at=row[7], updated_at=row[8],
                    context=orjson.loads(row[9]))


_COLS = "id, journey, profile_id, slot, status, step, waiting, entered_at, updated_at, context"


class _SQLiteTx(JourneyTx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def lock(self, profile_ids: Sequence[str]) -> None:
        pass  # BEGIN IMMEDIATE: this transaction is the only writer

    def try_lock(self, profile_id: str) -> bool:
        return True

    def claim_due(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute(
            "SELECT instance_id, step, fire_at FROM journey_timers WHERE fire_at<=? "
            "ORDER BY fire_at LIMIT ?", (now, limit))]

    def applied(self, uid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM journey_applied WHERE uid=?",
                                 (uid,)).fetchone() is not None

    def mark_applied(self, uids: Sequence[str]) -> None:
        now = time.time()
        self.conn.executemany("INSERT OR IGNORE INTO journey_applied (uid, at) VALUES (?, ?)",
                              [(u, now) for u in uids])

    def active(self, journey: str, profile_id: str) -> list[Instance]:
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM journey_instances WHERE profile_id=? AND journey=? "
            "AND status='active' ORDER BY entered_at", (profile_id, journey)).fetchall()
        return [_instance(r) for r in rows]

    def get(self, instance_id: str) -> Instance | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM journey_instances WHERE id=?",
                                (instance_id,)).fetchone()
        return _instance(row) if row else None

    def insert(self, instance: Instance) -> bool:
        try:
            self.conn.execute(
                f"INSERT INTO journey_instances ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (instance.id, instance.journey, instance.profile_id, instance.slot,
                 instance.status, instance.step, instance.waiting, instance.entered_at,
                 instance.updated_at, orjson.dumps(instance.context)))
        except sqlite3.IntegrityError:
            return False
        return True

    def save(self, instance: Instance) -> None:
        self.conn.execute(
            "UPDATE journey_instances SET status=?, step=?, waiting=?, updated_at=?, context=? "
            "WHERE id=?",
            (instance.status, instance.step, instance.waiting, instance.updated_at,
             orjson.dumps(instance.context), instance.id))

    def set_timer(self, instance_id: str, step: str, fire_at: float) -> None:
        self.conn.execute(
            "INSERT INTO journey_timers (instance_id, step, fire_at) VALUES (?, ?, ?) "
            "ON CONFLICT (instance_id, step) DO UPDATE SET fire_at=excluded.fire_at",
            (instance_id, step, fire_at))

    def take_timer(self, instance_id: str, step: str) -> bool:
        cur = self.conn.execute("DELETE FROM journey_timers WHERE instance_id=? AND step=?",
                                (instance_id, step))
        return cur.rowcount == 1

    def clear_timers(self, instance_id: str) -> None:
        self.conn.execute("DELETE FROM journey_timers WHERE instance_id=?", (instance_id,))

    def count(self, journey: str, step: str, what: str) -> None:
        if what not in ("entered", "completed", "exited"):
            raise ValueError(what)
        self.conn.execute(
            f"INSERT INTO journey_metrics (journey, step, {what}) VALUES (?, ?, 1) "
            f"ON CONFLICT (journey, step) DO UPDATE SET {what}={what}+1", (journey, step))

    def add_outbox(self, topic: str, msg_id: str, key: str, payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO journey_outbox (topic, msg_id, key, payload) VALUES (?, ?, ?, ?)",
            (topic, msg_id, key, payload))


class SQLiteJourneyState(JourneyState):
    def __init__(self, path: Path | str, synchronous: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sync = synchronous or os.environ.get("TESSERA_SQLITE_SYNCHRONOUS", "FULL")
        self._conn = sqlitefile.connect(self.path, sync)
        self._conn.execute("PRAGMA wal_autocheckpoint=1000")
        self._conn.executescript(SCHEMA)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[JourneyTx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def due_timers(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT instance_id, step, fire_at FROM journey_timers WHERE fire_at<=? "
            "ORDER BY fire_at LIMIT ?", (now, limit))]

    def next_timer_at(self) -> float | None:
        rows = self._rows("SELECT min(fire_at) FROM journey_timers")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def pending_outbox(self, limit: int) -> list[Outboxed]:
        return [Outboxed(*r) for r in self._rows(
            "SELECT id, topic, msg_id, key, payload FROM journey_outbox ORDER BY id LIMIT ?",
            (limit,))]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._conn.executemany("DELETE FROM journey_outbox WHERE id=?", [(i,) for i in ids])

    def metrics(self) -> list[StepMetrics]:
        out = {(r[0], r[1]): StepMetrics(r[0], r[1], r[2], r[3], r[4]) for r in self._rows(
            "SELECT journey, step, entered, completed, exited FROM journey_metrics")}
        for journey, step, waiting in self._rows(
                "SELECT journey, step, count(*) FROM journey_instances WHERE status='active' "
                "GROUP BY journey, step"):
            out.setdefault((journey, step), StepMetrics(journey, step)).waiting = waiting
        return [out[k] for k in sorted(out)]

    def instances(self, profile_id: str) -> list[Instance]:
        return [_instance(r) for r in self._rows(
            f"SELECT {_COLS} FROM journey_instances WHERE profile_id=? ORDER BY entered_at",
            (profile_id,))]

    def erase(self, profile_ids: Sequence[str], match: Callable[[bytes], bool]) -> int:
        with self._lock:
            self._conn.execute("PRAGMA secure_delete=ON")  # overwrite, not just unlink
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                for pid in profile_ids:
                    ids = [r[0] for r in self._conn.execute(
                        "SELECT id FROM journey_instances WHERE profile_id=?", (pid,))]
                    self._conn.executemany("DELETE FROM journey_timers WHERE instance_id=?",
                                           [(i,) for i in ids])
                    removed += self._conn.execute(
                        "DELETE FROM journey_instances WHERE profile_id=?", (pid,)).rowcount
                queued = [i for i, payload in self._conn.execute(
                    "SELECT id, payload FROM journey_outbox") if match(payload)]
                self._conn.executemany("DELETE FROM journey_outbox WHERE id=?",
                                       [(i,) for i in queued])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._conn.execute("PRAGMA secure_delete=OFF")
        sqlitefile.truncate_wal(self.path)
        return removed + len(queued)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
