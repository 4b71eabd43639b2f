"""The personalization state port: one contract, one module per backend."""

from __future__ import annotations

from pathlib import Path

from tessera.personalization.state.base import OfferRecord, State, StateTx

__all__ = ["FILE_NAME", "OfferRecord", "State", "StateTx", "open_state"]

FILE_NAME = "personalization.db"


def open_state(store_url: str | None, data_dir: Path) -> State:
    """Beside the store: a SQLite file in the data directory, or the store's PostgreSQL."""
    if store_url and store_url.startswith(("postgresql://", "postgres://")):
        from tessera.personalization.state.postgres import PostgresState

        return PostgresState(store_url)
    from tessera.personalization.state.sqlite import SQLiteState

    return SQLiteState(Path(data_dir) / FILE_NAME)
