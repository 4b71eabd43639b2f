"""The personalization state port: one contract, one module per backend."""

from __future__ import annotations

from pathlib import Path

from tessera.personalization.state.base import OfferRecord, SavedAudience, State, StateTx

__all__ = ["FILE_NAME", "OfferRecord", "SavedAudience", "State", "StateTx", "existing_state",
           "open_state"]

FILE_NAME = "personalization.db"


def open_state(store_url: str | None, data_dir: Path) -> State:
    """Beside the store: a SQLite file in the data directory, or the store's PostgreSQL."""
    if store_url and store_url.startswith(("postgresql://", "postgres://")):
        from tessera.personalization.state.postgres import PostgresState

        return PostgresState(store_url)
    from tessera.personalization.state.sqlite import SQLiteState

    return SQLiteState(Path(data_dir) / FILE_NAME)


def existing_state(store_url: str | None, data_dir: Path) -> State | None:
    """:func:`open_state`, or None where personalization never kept anything (no
    ``personalization.db``, or no ``pz_*`` tables in the store's PostgreSQL), so that
    readers such as an access export or an erasure create nothing."""
    if store_url and store_url.startswith(("postgresql://", "postgres://")):
        from tessera.personalization.state.postgres import PostgresState

        state = PostgresState(store_url)
        if not state.present():
            state.close()
            return None
        return state
    path = Path(data_dir) / FILE_NAME
    if not path.exists():
        return None
    from tessera.personalization.state.sqlite import SQLiteState

    return SQLiteState(path)
