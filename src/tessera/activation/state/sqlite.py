"""Activation state in ``activation.db`` (SQLite, WAL) in the data directory.

The embedded default: the API, the CLI and the worker processes of one host
share the file. Journeys keep their state in the same file
(:mod:`tessera.journeys.state.sqlite`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from tessera import sqlitefile
from tessera.activation.model import SubscriptionConfig
from tessera.activation.state.base import ActivationState, SubscriptionExists, SubscriptionState

FILE_NAME = "activation.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    origin TEXT NOT NULL,            -- 'api', 'config' or 'journey'
    definition BLOB,                 -- JSON of the SubscriptionConfig (API ones are the truth)
    created_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    initialized INTEGER NOT NULL DEFAULT 0,
    paused INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    filtered_out INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_at REAL,
    last_success_at REAL,
    version INTEGER NOT NULL DEFAULT 0
);
"""


_COLUMNS = ("name, origin, definition, created_at, initialized, paused, delivered, "
            "failed_attempts, dead_lettered, filtered_out, in_flight, last_error, "
            "last_error_at, last_success_at")


def _row(row: tuple[Any, ...]) -> SubscriptionState:
    definition = orjson.loads(row[2]) if row[2] else None
    return SubscriptionState(row[0], row[1], definition, row[3], bool(row[4]), bool(row[5]),
                             *row[6:])


class SQLiteActivationState(sqlitefile.SchemaFile, ActivationState):
    def __init__(self, path: Path | str, synchronous: str | None = None) -> None:
        sqlitefile.SchemaFile.__init__(self, path, SCHEMA, synchronous)

    @classmethod
    def in_dir(cls, data_dir: Path) -> SQLiteActivationState:
        return cls(Path(data_dir) / FILE_NAME)


    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self.conn().execute(sql, params).fetchone()

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self.conn().execute(sql, params).rowcount

    # -- subscriptions ------------------------------------------------------

    def create(self, sub: SubscriptionConfig, origin: str = "api", initialized: bool = False,
               created_at: float | None = None) -> SubscriptionState:
        """Record a new subscription; :class:`SubscriptionExists` if the name is taken."""
        now = time.time() if created_at is None else created_at
        definition = orjson.dumps(sub.model_dump(mode="json", by_alias=True))
        with self._lock:
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT deleted FROM subscriptions WHERE name=?",
                                   (sub.name,)).fetchone()
                if row is not None and not row[0]:
                    raise SubscriptionExists(sub.name)
                conn.execute("DELETE FROM subscriptions WHERE name=?", (sub.name,))
                conn.execute(
                    "INSERT INTO subscriptions (name, origin, definition, created_at, "
                    "initialized) VALUES (?, ?, ?, ?, ?)",
                    (sub.name, origin, definition, now, int(initialized)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        state = self.get(sub.name)
        assert state is not None
        return state

    def ensure(self, sub: SubscriptionConfig, origin: str) -> SubscriptionState:
        """Config and journey subscriptions: record them the first time they are seen."""
        definition = orjson.dumps(sub.model_dump(mode="json", by_alias=True))
        with self._lock:
            self.conn().execute(
                "INSERT INTO subscriptions (name, origin, definition, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "definition=excluded.definition, origin=excluded.origin, deleted=0",
                (sub.name, origin, definition, time.time()))
        state = self.get(sub.name)
        assert state is not None
        return state

    def delete(self, name: str) -> bool:
        return self._exec("UPDATE subscriptions SET deleted=1 WHERE name=? AND origin='api' "
                          "AND deleted=0", (name,)) == 1

    def get(self, name: str) -> SubscriptionState | None:
        row = self._one(f"SELECT {_COLUMNS} FROM subscriptions WHERE name=? AND deleted=0",
                        (name,))
        return _row(row) if row else None

    def all(self) -> list[SubscriptionState]:
        with self._lock:
            rows = self.conn().execute(
                f"SELECT {_COLUMNS} FROM subscriptions WHERE deleted=0 ORDER BY name").fetchall()
        return [_row(r) for r in rows]

    def api_subscriptions(self) -> list[SubscriptionConfig]:
        with self._lock:
            rows = self.conn().execute(
                "SELECT definition FROM subscriptions WHERE origin='api' AND deleted=0 "
                "ORDER BY name").fetchall()
        return [SubscriptionConfig.model_validate_json(r[0], strict=False) for r in rows]

    def version(self) -> tuple[int, int]:
        """Changes when API subscriptions are added or removed."""
        row = self._one("SELECT count(*), coalesce(sum(created_at * 1000 + deleted), 0) "
                        "FROM subscriptions WHERE origin='api'")
        return int(row[0]), int(row[1])

    def mark_initialized(self, name: str) -> None:
        self._exec("UPDATE subscriptions SET initialized=1 WHERE name=?", (name,))

    def set_paused(self, name: str, paused: bool) -> bool:
        return self._exec("UPDATE subscriptions SET paused=? WHERE name=? AND deleted=0",
                          (int(paused), name)) == 1

    def paused(self) -> set[str]:
        with self._lock:
            rows = self.conn().execute(
                "SELECT name FROM subscriptions WHERE paused=1 AND deleted=0").fetchall()
        return {r[0] for r in rows}

    def add_stats(self, name: str, delivered: int, failed_attempts: int, dead_lettered: int,
                  filtered_out: int, in_flight: int, last_error: str | None,
                  last_error_at: float | None, last_success_at: float | None) -> None:
        self._exec(
            "UPDATE subscriptions SET delivered=delivered+?, failed_attempts=failed_attempts+?, "
            "dead_lettered=dead_lettered+?, filtered_out=filtered_out+?, in_flight=?, "
            "last_error=coalesce(?, last_error), last_error_at=coalesce(?, last_error_at), "
            "last_success_at=coalesce(?, last_success_at) WHERE name=?",
            (delivered, failed_attempts, dead_lettered, filtered_out, in_flight, last_error,
             last_error_at, last_success_at, name))
