"""The trust records port: one contract (:mod:`.base`), one module per backend.

The records go where the profiles go: a PostgreSQL store URL puts them in the
same database and schema; otherwise ``trust.db`` in the data directory.
"""

from __future__ import annotations

from pathlib import Path

from tessera.privacy.records.base import AuditEntry, ManagedKey, TrustRecords

__all__ = ["AuditEntry", "ManagedKey", "TrustRecords", "open_records"]


def open_records(store_url: str | None, data_dir: Path) -> TrustRecords:
    if store_url and store_url.startswith(("postgresql://", "postgres://")):
        from tessera.privacy.records.postgres import PostgresRecords

        return PostgresRecords(store_url)
    from tessera.privacy.records.sqlite import SQLiteRecords

    return SQLiteRecords(Path(data_dir) / "trust.db")
