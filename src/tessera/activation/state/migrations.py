"""Versioned migrations for the activation and journey tables in the store's PostgreSQL.

The store's own ``schema_migrations`` belongs to the profiles (the store warns
about versions it does not know), so each port here keeps its history in a
table of its own (``act_migrations``, ``jrn_migrations``), with the same rules:
applied steps are never edited, a change is a new step, and a session
advisory lock on a dedicated connection lets many processes start at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from tessera.store.base import StoreUnavailable
from tessera.store.postgres import _configure, _key, create_schema, parse_url

log = logging.getLogger("tessera.activation.migrations")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a port's schema history."""

    version: int
    name: str
    sql: str


def apply(conninfo: str, schema: str, table: str, steps: Sequence[Step]) -> list[int]:
    """Create ``schema`` if needed and apply the missing ``steps``, each in its own
    transaction, recording them in ``table``; the versions applied now."""
    done: list[int] = []
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL for {table}: {exc}") from exc
    with conn:
        key = _key(schema.encode(), f"{table}.migrate")
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
        try:
            create_schema(conn, schema)
            history = sql.Identifier(schema, table)
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())").format(history))
            have = {r[0] for r in conn.execute(sql.SQL("SELECT version FROM {}").format(history))}
            for step in sorted(steps, key=lambda s: s.version):
                if step.version in have:
                    continue
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(
                        sql.Identifier(schema)))
                    conn.execute(step.sql.encode())
                    conn.execute(sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)")
                                 .format(history), [step.version, step.name])
                log.info("applied %s migration %s (%s) in schema %s", table, step.version,
                         step.name, schema)
                done.append(step.version)
            newer = sorted(v for v in have if v not in {s.version for s in steps})
            if newer:
                log.warning("%s in schema %s has migrations this release does not know: %s",
                            table, schema, newer)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])
    return done


def applied(conninfo: str, schema: str, table: str) -> list[int]:
    """The versions recorded in ``table`` (for ``tessera migrate`` and tests)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [r[0] for r in conn.execute(sql.SQL("SELECT version FROM {} ORDER BY version")
                                           .format(sql.Identifier(schema, table)))]


class MigratedPool:
    """A connection pool to the store's PostgreSQL that brings its port's tables up to
    date before the first connection, shared by the activation and the journey state.

    ``url`` is the store's URL (its ``schema`` and ``pool_timeout`` options apply).
    The pool holds no connection until it is used (``min_size`` 0: an API process
    that never touches this port holds none).
    """

    def __init__(self, url: str, *, history: str, steps: Sequence[Step], what: str,
                 prefix: str, max_size: int = 4) -> None:
        self.conninfo, settings = parse_url(url, {})
        self.schema = settings.schema
        self.timeout = settings.pool_timeout
        self.history = history
        self.steps = steps
        self.what = what
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._pool: ConnectionPool[Any] = ConnectionPool(
            self.conninfo, kwargs={"autocommit": True}, min_size=0, max_size=max_size,
            timeout=settings.pool_timeout, max_idle=60.0, configure=_configure,
            name=f"tessera-{prefix}-{self.schema}", open=False)

    def migrate(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.what} is closed")
            apply(self.conninfo, self.schema, self.history, self.steps)
            if not self._ready:
                self._pool.open(wait=False)
                self._ready = True

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._ready:
            self.migrate()
        try:
            with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"{self.what}: no connection: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._ready:
                self._pool.close()
            self._ready = False
            self._closed = True
