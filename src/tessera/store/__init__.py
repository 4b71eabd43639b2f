"""The profile store port: one contract (:mod:`tessera.store.base`), one module per backend."""

from __future__ import annotations

from pathlib import Path

from tessera.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str | None, data_dir: Path) -> Store:
    """Choose the backend by URL: ``sqlite:///path`` (default) or ``postgresql://...``."""
    if not url or url.startswith("sqlite:"):
        from tessera.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite://")) if url else data_dir / "store.db"
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from tessera.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")
