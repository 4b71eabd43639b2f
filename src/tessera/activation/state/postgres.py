"""Activation state in PostgreSQL: ``act_*`` tables in the store's database and schema.

Used when the store is PostgreSQL, so that a subscription created through the
API of one node is run by the activation workers of every host, and a pause
stops all of them. Several workers add to one subscription's counters at
once: every change is one statement (``x = x + n``), so none is lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson
import psycopg

from tessera.activation.model import SubscriptionConfig
from tessera.activation.state import migrations
from tessera.activation.state.base import ActivationState, SubscriptionExists, SubscriptionState

HISTORY = "act_migrations"

MIGRATIONS: tuple[migrations.Step, ...] = (
    migrations.Step(1, "subscriptions with pause flags and delivery counters", """
        CREATE TABLE act_subscriptions (
            name text COLLATE "C" PRIMARY KEY,
            origin text NOT NULL,
            definition jsonb,
            created_at double precision NOT NULL,
            deleted boolean NOT NULL DEFAULT false,
            initialized boolean NOT NULL DEFAULT false,
            paused boolean NOT NULL DEFAULT false,
            delivered bigint NOT NULL DEFAULT 0,
            failed_attempts bigint NOT NULL DEFAULT 0,
            dead_lettered bigint NOT NULL DEFAULT 0,
            filtered_out bigint NOT NULL DEFAULT 0,
            in_flight bigint NOT NULL DEFAULT 0,
            last_error text,
            last_error_at double precision,
            last_success_at double precision
        );
    """),
)

_COLUMNS = ("name, origin, definition, created_at, initialized, paused, delivered, "
            "failed_attempts, dead_lettered, filtered_out, in_flight, last_error, "
            "last_error_at, last_success_at")


def _row(row: Sequence[Any]) -> SubscriptionState:
    return SubscriptionState(row[0], row[1], row[2], row[3], row[4], row[5], *row[6:])


def _definition(sub: SubscriptionConfig) -> str:
    return orjson.dumps(sub.model_dump(mode="json", by_alias=True)).decode()


class PostgresActivationState(ActivationState):
    """``url`` is the store's URL (its ``schema`` and ``pool_timeout`` options apply)."""

    def __init__(self, url: str, pool_max_size: int = 4) -> None:
        self._db = migrations.MigratedPool(url, history=HISTORY, steps=MIGRATIONS,
                                           what="activation state", prefix="act",
                                           max_size=pool_max_size)
        self.conninfo, self.schema = self._db.conninfo, self._db.schema

    def migrate(self) -> None:
        self._db.migrate()

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._db.connection()

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(query.encode(), list(params)).fetchall()

    def _exec(self, query: str, params: Sequence[Any] = ()) -> int:
        with self._connection() as conn:
            return conn.execute(query.encode(), list(params)).rowcount

    def create(self, sub: SubscriptionConfig, origin: str = "api", initialized: bool = False,
               created_at: float | None = None) -> SubscriptionState:
        now = time.time() if created_at is None else created_at
        # one statement: of two nodes creating the same name at once, one wins
        taken = self._exec(
            "INSERT INTO act_subscriptions (name, origin, definition, created_at, initialized) "
            "VALUES (%s, %s, %s::jsonb, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "origin = excluded.origin, definition = excluded.definition, "
            "created_at = excluded.created_at, initialized = excluded.initialized, "
            "deleted = false, paused = false, delivered = 0, failed_attempts = 0, "
            "dead_lettered = 0, filtered_out = 0, in_flight = 0, last_error = NULL, "
            "last_error_at = NULL, last_success_at = NULL "
            "WHERE act_subscriptions.deleted",
            [sub.name, origin, _definition(sub), now, initialized])
        if taken != 1:
            raise SubscriptionExists(sub.name)
        state = self.get(sub.name)
        assert state is not None
        return state

    def ensure(self, sub: SubscriptionConfig, origin: str) -> SubscriptionState:
        self._exec(
            "INSERT INTO act_subscriptions (name, origin, definition, created_at) "
            "VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (name) DO UPDATE SET "
            "definition = excluded.definition, origin = excluded.origin, deleted = false",
            [sub.name, origin, _definition(sub), time.time()])
        state = self.get(sub.name)
        assert state is not None
        return state

    def delete(self, name: str) -> bool:
        return self._exec("UPDATE act_subscriptions SET deleted = true WHERE name = %s "
                          "AND origin = 'api' AND NOT deleted", [name]) == 1

    def get(self, name: str) -> SubscriptionState | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM act_subscriptions WHERE name = %s "
                          "AND NOT deleted", [name])
        return _row(rows[0]) if rows else None

    def all(self) -> list[SubscriptionState]:
        return [_row(r) for r in self._rows(
            f"SELECT {_COLUMNS} FROM act_subscriptions WHERE NOT deleted ORDER BY name")]

    def api_subscriptions(self) -> list[SubscriptionConfig]:
        rows = self._rows("SELECT definition FROM act_subscriptions WHERE origin = 'api' "
                          "AND NOT deleted ORDER BY name")
        return [SubscriptionConfig.model_validate(r[0], strict=False) for r in rows]

    def version(self) -> tuple[int, int]:
        row = self._rows("SELECT count(*), coalesce(sum((created_at * 1000)::bigint "
                         "+ deleted::int), 0) FROM act_subscriptions WHERE origin = 'api'")[0]
        return int(row[0]), int(row[1])

    def mark_initialized(self, name: str) -> None:
        self._exec("UPDATE act_subscriptions SET initialized = true WHERE name = %s", [name])

    def set_paused(self, name: str, paused: bool) -> bool:
        return self._exec("UPDATE act_subscriptions SET paused = %s WHERE name = %s "
                          "AND NOT deleted", [paused, name]) == 1

    def paused(self) -> set[str]:
        return {r[0] for r in self._rows(
            "SELECT name FROM act_subscriptions WHERE paused AND NOT deleted")}

    def add_stats(self, name: str, delivered: int, failed_attempts: int, dead_lettered: int,
                  filtered_out: int, in_flight: int, last_error: str | None,
                  last_error_at: float | None, last_success_at: float | None) -> None:
        self._exec(
            "UPDATE act_subscriptions SET delivered = delivered + %s, "
            "failed_attempts = failed_attempts + %s, dead_lettered = dead_lettered + %s, "
            "filtered_out = filtered_out + %s, in_flight = %s, "
            "last_error = coalesce(%s, last_error), "
            "last_error_at = coalesce(%s, last_error_at), "
            "last_success_at = greatest(%s, last_success_at) WHERE name = %s",
            [delivered, failed_attempts, dead_lettered, filtered_out, in_flight, last_error,
             last_error_at, last_success_at, name])

    def close(self) -> None:
        self._db.close()
