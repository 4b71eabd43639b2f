"""The activation state port: one contract (:mod:`.base`), one module per backend.

The state goes where the profiles go: a PostgreSQL store URL puts it in the
same database and schema (``act_*`` tables), so every API node and every
activation worker on every host shares it; otherwise ``activation.db`` in the
data directory, shared by the processes of one host.
"""

from __future__ import annotations

from pathlib import Path

from tessera.activation.state.base import ActivationState, SubscriptionExists, SubscriptionState
from tessera.activation.state.sqlite import FILE_NAME, SQLiteActivationState

__all__ = ["FILE_NAME", "ActivationState", "SQLiteActivationState", "SubscriptionExists",
           "SubscriptionState", "is_postgres", "open_activation_state"]


def is_postgres(store_url: str | None) -> bool:
    """Whether this store URL names PostgreSQL (then activation and journeys live there)."""
    return bool(store_url) and str(store_url).startswith(("postgresql://", "postgres://"))


def open_activation_state(store_url: str | None, data_dir: Path) -> ActivationState:
    """Beside the store: the store's PostgreSQL, or ``activation.db`` in ``data_dir``."""
    if store_url and is_postgres(store_url):
        from tessera.activation.state.postgres import PostgresActivationState

        return PostgresActivationState(store_url)
    return SQLiteActivationState(Path(data_dir) / FILE_NAME)


def migrate_beside_store(store_url: str | None, data_dir: Path) -> None:
    """Create or upgrade the activation and the journey state (``tessera migrate``)."""
    from tessera.journeys.state import open_journey_state

    for state in (open_activation_state(store_url, data_dir),
                  open_journey_state(store_url, data_dir)):
        try:
            state.migrate()
        finally:
            state.close()
