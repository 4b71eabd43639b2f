"""Trust records in ``trust.db`` (SQLite, WAL) in the data directory.

A separate file from the store so that erasing or rebuilding profiles never
touches keys or the audit log; every API process of the installation opens it,
which is how a key created by ``tessera keys create`` is seen without a restart.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tessera import sqlitefile
from tessera.privacy.records.base import AuditEntry, DataKey, ManagedKey, TrustRecords

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    source TEXT,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    rate_per_second REAL,
    replaces TEXT
);
CREATE TABLE IF NOT EXISTS suppressions (
    digest TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_keys (
    id TEXT PRIMARY KEY,
    check_value TEXT NOT NULL,
    created_at REAL NOT NULL,
    retired_at REAL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details BLOB NOT NULL
);
"""

KEY_COLUMNS = ("id, kind, digest, prefix, source, scopes, name, created_at, revoked_at, "
               "rate_per_second, replaces")


def key_from_row(row: Sequence[Any]) -> ManagedKey:
    scopes = row[5]
    return ManagedKey(
        id=row[0], kind=row[1], digest=row[2], prefix=row[3], source=row[4],
        scopes=frozenset(s for s in scopes.split(" ") if s), name=row[6], created_at=row[7],
        revoked_at=row[8], rate_per_second=row[9], replaces=row[10],
    )


def key_to_row(key: ManagedKey) -> tuple[Any, ...]:
    return (key.id, key.kind, key.digest, key.prefix, key.source, " ".join(sorted(key.scopes)),
            key.name, key.created_at, key.revoked_at, key.rate_per_second, key.replaces)


def entry_from_row(row: Sequence[Any]) -> AuditEntry:
    details = row[6]
    return AuditEntry(id=row[0], at=row[1], action=row[2], actor=row[3], target=row[4],
                      outcome=row[5], details=orjson.loads(details) if details else {})


class SQLiteRecords(TrustRecords):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._migrated = False

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlitefile.connect(self.path, "FULL")
            conn.execute("PRAGMA wal_autocheckpoint=1000")  # few writes: let SQLite checkpoint
            if not self._migrated:
                conn.executescript(SCHEMA)
                self._migrated = True
            self._local.conn = conn
        return conn

    def migrate(self) -> None:
        self._conn()

    def add_key(self, key: ManagedKey) -> None:
        try:
            self._conn().execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                key_to_row(key))
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"key {key.id} exists: {exc}") from None

    def key_by_digest(self, digest: str) -> ManagedKey | None:
        row = self._conn().execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE digest=?", (digest,)).fetchone()
        return key_from_row(row) if row else None

    def get_key(self, key_id: str) -> ManagedKey | None:
        row = self._conn().execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id=?", (key_id,)).fetchone()
        return key_from_row(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[ManagedKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [key_from_row(r) for r in self._conn().execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id")]

    def revoke_key(self, key_id: str, at: float) -> bool:
        cur = self._conn().execute(
            "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (at, key_id))
        return cur.rowcount == 1

    def suppress(self, digests: Sequence[str], at: float) -> None:
        self._conn().executemany(
            "INSERT OR IGNORE INTO suppressions (digest, at) VALUES (?, ?)",
            [(d, at) for d in digests])

    def suppressed(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT digest FROM suppressions")}

    def suppression_version(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM suppressions").fetchone()[0])

    def audit(self, entry: AuditEntry) -> int:
        cur = self._conn().execute(
            "INSERT INTO audit_log (at, action, actor, target, outcome, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.at, entry.action, entry.actor, entry.target, entry.outcome,
             orjson.dumps(entry.details)))
        return int(cur.lastrowid or 0)

    def audit_entries(
        self, limit: int = 100, before: int | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        sql = "SELECT id, at, action, actor, target, outcome, details FROM audit_log WHERE 1=1"
        params: list[Any] = []
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        if action:
            sql += " AND substr(action, 1, ?) = ?"
            params += [len(action), action]
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [entry_from_row(r) for r in self._conn().execute(sql, params)]

    def data_keys(self) -> list[DataKey]:
        return [DataKey(*r) for r in self._conn().execute(
            "SELECT id, check_value, created_at, retired_at FROM data_keys "
            "ORDER BY created_at, id")]

    def add_data_key(self, key_id: str, check: str, at: float) -> None:
        self._conn().execute(
            "INSERT OR IGNORE INTO data_keys (id, check_value, created_at) VALUES (?, ?, ?)",
            (key_id, check, at))

    def retire_data_keys(self, key_ids: Sequence[str], at: float) -> None:
        self._conn().executemany(
            "UPDATE data_keys SET retired_at=? WHERE id=? AND retired_at IS NULL",
            [(at, kid) for kid in key_ids])

    def unretire_data_key(self, key_id: str) -> None:
        self._conn().execute("UPDATE data_keys SET retired_at=NULL WHERE id=?", (key_id,))

    def get_state(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM state WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, name: str, value: str | None) -> None:
        if value is None:
            self._conn().execute("DELETE FROM state WHERE name=?", (name,))
        else:
            self._conn().execute("INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)",
                                 (name, value))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
