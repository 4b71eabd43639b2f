"""Trust records in PostgreSQL, in the store's database and schema.

Tables are created with ``IF NOT EXISTS`` on first use (they are independent of
the store's numbered migrations, which belong to the profiles). A small pool of
its own keeps key lookups off the processors' connections.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from tessera.privacy.records.base import AuditEntry, DataKey, ManagedKey, TrustRecords
from tessera.privacy.records.sqlite import KEY_COLUMNS, entry_from_row, key_from_row, key_to_row
from tessera.store.postgres import _key, create_schema, parse_url

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust_keys (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    source TEXT,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    rate_per_second DOUBLE PRECISION,
    replaces TEXT
);
CREATE TABLE IF NOT EXISTS trust_suppressions (
    digest TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS trust_data_keys (
    id TEXT PRIMARY KEY,
    check_value TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS trust_state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trust_audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details BYTEA NOT NULL
);
"""


class PostgresRecords(TrustRecords):
    def __init__(self, url: str, schema: str | None = None) -> None:
        options = {"schema": schema} if schema else {}
        self.url, self.settings = parse_url(url, options)
        self.schema = self.settings.schema
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()
        self._migrated = False

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(self.url, min_size=0, max_size=4, open=True,
                                            kwargs={"autocommit": True},
                                            name=f"tessera-trust-{self.schema}")
            pool = self._pool
        if not self._migrated:
            self.migrate()
        with pool.connection(timeout=self.settings.pool_timeout) as conn:
            yield conn

    def migrate(self) -> None:
        """Create the tables if needed. Processes start at once (an API and its workers):
        a session advisory lock serializes them, since concurrent ``CREATE TABLE IF NOT
        EXISTS`` of one table can fail on PostgreSQL's catalog."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            key = _key(self.schema.encode(), "trust.migrate")
            conn.execute("SELECT pg_advisory_lock(%s)", [key])
            try:
                create_schema(conn, self.schema)
                conn.execute(sql.SQL("SET search_path TO {}").format(
                    sql.Identifier(self.schema)))
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement.encode())
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [key])
        self._migrated = True

    def add_key(self, key: ManagedKey) -> None:
        try:
            with self._conn() as conn:
                conn.execute(f"INSERT INTO trust_keys ({KEY_COLUMNS}) VALUES "
                             f"(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)".encode(), key_to_row(key))
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"key {key.id} exists: {exc}") from None

    def _one_key(self, column: str, value: str) -> ManagedKey | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM trust_keys WHERE {column}=%s".encode(), (value,)
            ).fetchone()
        return key_from_row(row) if row else None

    def key_by_digest(self, digest: str) -> ManagedKey | None:
        return self._one_key("digest", digest)

    def get_key(self, key_id: str) -> ManagedKey | None:
        return self._one_key("id", key_id)

    def list_keys(self, include_revoked: bool = False) -> list[ManagedKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM trust_keys{where} ORDER BY created_at, id".encode()
            ).fetchall()
        return [key_from_row(r) for r in rows]

    def revoke_key(self, key_id: str, at: float) -> bool:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE trust_keys SET revoked_at=%s WHERE id=%s AND revoked_at IS NULL",
                (at, key_id))
            return cur.rowcount == 1

    def suppress(self, digests: Sequence[str], at: float) -> None:
        if not digests:
            return
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO trust_suppressions (digest, at) SELECT d, %s FROM unnest(%s::text[]) "
                "AS d ON CONFLICT (digest) DO NOTHING", (at, list(digests)))

    def suppressed(self) -> set[str]:
        with self._conn() as conn:
            return {r[0] for r in conn.execute("SELECT digest FROM trust_suppressions")}

    def suppression_version(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT count(*) FROM trust_suppressions").fetchone()
        return int(row[0]) if row else 0

    def audit(self, entry: AuditEntry) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO trust_audit (at, action, actor, target, outcome, details) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (entry.at, entry.action, entry.actor, entry.target, entry.outcome,
                 orjson.dumps(entry.details))).fetchone()
        return int(row[0]) if row else 0

    def audit_entries(
        self, limit: int = 100, before: int | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        query = "SELECT id, at, action, actor, target, outcome, details FROM trust_audit WHERE true"
        params: list[Any] = []
        if before is not None:
            query += " AND id < %s"
            params.append(before)
        if action:
            query += " AND starts_with(action, %s)"
            params.append(action)
        query += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        with self._conn() as conn:
            rows = conn.execute(query.encode(), params).fetchall()
        return [entry_from_row((r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]))) for r in rows]

    def data_keys(self) -> list[DataKey]:
        with self._conn() as conn:
            rows = conn.execute("SELECT id, check_value, created_at, retired_at "
                                "FROM trust_data_keys ORDER BY created_at, id").fetchall()
        return [DataKey(*r) for r in rows]

    def add_data_key(self, key_id: str, check: str, at: float) -> None:
        with self._conn() as conn:
            conn.execute("INSERT INTO trust_data_keys (id, check_value, created_at) "
                         "VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING", (key_id, check, at))

    def retire_data_keys(self, key_ids: Sequence[str], at: float) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE trust_data_keys SET retired_at=%s "
                         "WHERE id = ANY(%s) AND retired_at IS NULL", (at, list(key_ids)))

    def unretire_data_key(self, key_id: str) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE trust_data_keys SET retired_at=NULL WHERE id=%s", (key_id,))

    def get_state(self, name: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM trust_state WHERE name=%s", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, name: str, value: str | None) -> None:
        with self._conn() as conn:
            if value is None:
                conn.execute("DELETE FROM trust_state WHERE name=%s", (name,))
            else:
                conn.execute("INSERT INTO trust_state (name, value) VALUES (%s, %s) "
                             "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                             (name, value))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
