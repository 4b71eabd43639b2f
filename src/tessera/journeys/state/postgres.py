"""Journey state in PostgreSQL: ``jrn_*`` tables in the store's database and schema.

Used when the store is PostgreSQL, so that several engines (activation workers
on several hosts, members of the bus's ``journeys`` consumer group) share the
instances and timers: a timer set by one engine fires in another after the
first one stops. How transactions of several engines stay apart:

- an event batch takes a transaction-scoped advisory lock per profile, in
  sorted order, before reading anything (:meth:`PostgresJourneyTx.lock`);
- the timer loop claims due timers with ``FOR UPDATE SKIP LOCKED`` and takes
  each timer's profile with ``pg_try_advisory_xact_lock``: a timer another
  engine holds, or whose profile is busy, is left for a later tick, so it
  fires once and never waits while holding a lock;
- step counters are hot rows every transaction updates: they are added up in
  the transaction and written at commit, in sorted order, so the rows are held
  only for the commit and two transactions never lock them in opposite orders.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import orjson
import psycopg

from tessera.activation.state import migrations
from tessera.journeys.state.base import (
    Instance,
    JourneyState,
    JourneyTx,
    Outboxed,
    StepMetrics,
)
from tessera.store.postgres import _key

HISTORY = "jrn_migrations"

MIGRATIONS: tuple[migrations.Step, ...] = (
    migrations.Step(1, "journey instances, timers, step metrics, handled events, outbox", """
        CREATE TABLE jrn_instances (
            id text COLLATE "C" PRIMARY KEY,
            journey text COLLATE "C" NOT NULL,
            profile_id text COLLATE "C" NOT NULL,
            slot text COLLATE "C" NOT NULL,
            status text NOT NULL,
            step text NOT NULL,
            waiting text,
            entered_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            context bytea NOT NULL
        );
        -- at most one active instance per journey and slot (profile, or instance on reentry)
        CREATE UNIQUE INDEX jrn_one_active ON jrn_instances (journey, slot)
            WHERE status = 'active';
        CREATE INDEX jrn_by_profile ON jrn_instances (profile_id, status);

        CREATE TABLE jrn_timers (
            instance_id text COLLATE "C" NOT NULL,
            step text COLLATE "C" NOT NULL,
            fire_at double precision NOT NULL,
            PRIMARY KEY (instance_id, step)
        );
        CREATE INDEX jrn_timers_due ON jrn_timers (fire_at);

        CREATE TABLE jrn_metrics (
            journey text COLLATE "C" NOT NULL,
            step text COLLATE "C" NOT NULL,
            entered bigint NOT NULL DEFAULT 0,
            completed bigint NOT NULL DEFAULT 0,
            exited bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (journey, step)
        );

        CREATE TABLE jrn_applied (
            uid text COLLATE "C" PRIMARY KEY,
            at double precision NOT NULL
        );

        CREATE TABLE jrn_outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            topic text NOT NULL,
            msg_id text NOT NULL,
            key text NOT NULL,
            payload bytea NOT NULL
        );
    """),
)

_COLS = "id, journey, profile_id, slot, status, step, waiting, entered_at, updated_at, context"
_WHAT = ("entered", "completed", "exited")


def _instance(row: Sequence[Any]) -> Instance:
    return Instance(id=row[0], journey=row[1], profile_id=row[2], slot=row[3], status=row[4],
                    step=row[5], waiting=row[6], entered_at=row[7], updated_at=row[8],
                    context=orjson.loads(row[9]))


class PostgresJourneyTx(JourneyTx):
    """One transaction on one pooled connection (see the module docstring for its locks)."""

    def __init__(self, conn: psycopg.Connection[Any], namespace: bytes) -> None:
        self.conn = conn
        self.ns = namespace
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def _lock_key(self, profile_id: str) -> int:
        return _key(self.ns, "jrn", profile_id)

    def lock(self, profile_ids: Sequence[str]) -> None:
        for pid in sorted(set(profile_ids)):
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_key(pid)])

    def try_lock(self, profile_id: str) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                [self._lock_key(profile_id)]).fetchone()
        return bool(row and row[0])

    def claim_due(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        rows = self.conn.execute(
            "SELECT instance_id, step, fire_at FROM jrn_timers WHERE fire_at <= %s "
            "ORDER BY fire_at LIMIT %s FOR UPDATE SKIP LOCKED", [now, limit]).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def applied(self, uid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM jrn_applied WHERE uid = %s",
                                 [uid]).fetchone() is not None

    def mark_applied(self, uids: Sequence[str]) -> None:
        if uids:
            self.conn.execute("INSERT INTO jrn_applied (uid, at) SELECT u, %s "
                              "FROM unnest(%s::text[]) AS u ON CONFLICT DO NOTHING",
                              [time.time(), list(uids)])

    def active(self, journey: str, profile_id: str) -> list[Instance]:
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM jrn_instances WHERE profile_id = %s AND journey = %s "
            "AND status = 'active' ORDER BY entered_at, id", [profile_id, journey]).fetchall()
        return [_instance(r) for r in rows]

    def get(self, instance_id: str) -> Instance | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM jrn_instances WHERE id = %s",
                                [instance_id]).fetchone()
        return _instance(row) if row else None

    def insert(self, instance: Instance) -> bool:
        # DO NOTHING covers the primary key and the one-active-per-slot index alike
        cur = self.conn.execute(
            f"INSERT INTO jrn_instances ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [instance.id, instance.journey, instance.profile_id, instance.slot, instance.status,
             instance.step, instance.waiting, instance.entered_at, instance.updated_at,
             orjson.dumps(instance.context)])
        return cur.rowcount == 1

    def save(self, instance: Instance) -> None:
        self.conn.execute(
            "UPDATE jrn_instances SET status = %s, step = %s, waiting = %s, updated_at = %s, "
            "context = %s WHERE id = %s",
            [instance.status, instance.step, instance.waiting, instance.updated_at,
             orjson.dumps(instance.context), instance.id])

    def set_timer(self, instance_id: str, step: str, fire_at: float) -> None:
        self.conn.execute(
            "INSERT INTO jrn_timers (instance_id, step, fire_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (instance_id, step) DO UPDATE SET fire_at = excluded.fire_at",
            [instance_id, step, fire_at])

    def take_timer(self, instance_id: str, step: str) -> bool:
        cur = self.conn.execute("DELETE FROM jrn_timers WHERE instance_id = %s AND step = %s",
                                [instance_id, step])
        return cur.rowcount == 1

    def clear_timers(self, instance_id: str) -> None:
        self.conn.execute("DELETE FROM jrn_timers WHERE instance_id = %s", [instance_id])

    def count(self, journey: str, step: str, what: str) -> None:
        if what not in _WHAT:
            raise ValueError(what)
        self.counts[(journey, step, what)] += 1

    def add_outbox(self, topic: str, msg_id: str, key: str, payload: bytes) -> None:
        self.conn.execute("INSERT INTO jrn_outbox (topic, msg_id, key, payload) "
                          "VALUES (%s, %s, %s, %s)", [topic, msg_id, key, payload])

    def flush(self) -> None:
        """Write the step counters, in sorted order (just before commit)."""
        rows: dict[tuple[str, str], list[int]] = {}
        for (journey, step, what), n in self.counts.items():
            rows.setdefault((journey, step), [0, 0, 0])[_WHAT.index(what)] += n
        self.counts.clear()
        for (journey, step), (entered, completed, exited) in sorted(rows.items()):
            self.conn.execute(
                "INSERT INTO jrn_metrics (journey, step, entered, completed, exited) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (journey, step) DO UPDATE SET "
                "entered = jrn_metrics.entered + excluded.entered, "
                "completed = jrn_metrics.completed + excluded.completed, "
                "exited = jrn_metrics.exited + excluded.exited",
                [journey, step, entered, completed, exited])


class PostgresJourneyState(JourneyState):
    """``url`` is the store's URL (its ``schema`` and ``pool_timeout`` options apply)."""

    def __init__(self, url: str, pool_max_size: int = 4) -> None:
        self._db = migrations.MigratedPool(url, history=HISTORY, steps=MIGRATIONS,
                                           what="journey state", prefix="jrn",
                                           max_size=pool_max_size)
        self.conninfo, self.schema = self._db.conninfo, self._db.schema
        self._ns = self.schema.encode()

    def migrate(self) -> None:
        self._db.migrate()

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._db.connection()

    @contextmanager
    def transaction(self) -> Iterator[JourneyTx]:
        with self._connection() as conn, conn.transaction():
            tx = PostgresJourneyTx(conn, self._ns)
            yield tx
            tx.flush()

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(query.encode(), list(params)).fetchall()

    def due_timers(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT instance_id, step, fire_at FROM jrn_timers WHERE fire_at <= %s "
            "ORDER BY fire_at LIMIT %s", [now, limit])]

    def next_timer_at(self) -> float | None:
        rows = self._rows("SELECT min(fire_at) FROM jrn_timers")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def pending_outbox(self, limit: int) -> list[Outboxed]:
        return [Outboxed(r[0], r[1], r[2], r[3], bytes(r[4])) for r in self._rows(
            "SELECT id, topic, msg_id, key, payload FROM jrn_outbox ORDER BY id LIMIT %s",
            [limit])]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            with self._connection() as conn:
                conn.execute("DELETE FROM jrn_outbox WHERE id = ANY(%s)", [list(ids)])

    def metrics(self) -> list[StepMetrics]:
        out = {(r[0], r[1]): StepMetrics(r[0], r[1], r[2], r[3], r[4]) for r in self._rows(
            "SELECT journey, step, entered, completed, exited FROM jrn_metrics")}
        for journey, step, waiting in self._rows(
                "SELECT journey, step, count(*) FROM jrn_instances WHERE status = 'active' "
                "GROUP BY journey, step"):
            out.setdefault((journey, step), StepMetrics(journey, step)).waiting = waiting
        return [out[k] for k in sorted(out)]

    def instances(self, profile_id: str) -> list[Instance]:
        return [_instance(r) for r in self._rows(
            f"SELECT {_COLS} FROM jrn_instances WHERE profile_id = %s ORDER BY entered_at, id",
            [profile_id])]

    def erase(self, profile_ids: Sequence[str], match: Callable[[bytes], bool]) -> int:
        with self.transaction() as tx:
            assert isinstance(tx, PostgresJourneyTx)
            tx.lock(profile_ids)  # no engine moves these instances meanwhile
            conn = tx.conn
            ids = list(profile_ids)
            conn.execute("DELETE FROM jrn_timers WHERE instance_id IN "
                         "(SELECT id FROM jrn_instances WHERE profile_id = ANY(%s))", [ids])
            removed = conn.execute("DELETE FROM jrn_instances WHERE profile_id = ANY(%s)",
                                   [ids]).rowcount
            queued = [r[0] for r in conn.execute("SELECT id, payload FROM jrn_outbox")
                      if match(bytes(r[1]))]
            if queued:
                conn.execute("DELETE FROM jrn_outbox WHERE id = ANY(%s)", [queued])
        return removed + len(queued)

    def close(self) -> None:
        self._db.close()
