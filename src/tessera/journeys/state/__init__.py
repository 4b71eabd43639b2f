"""The journey state port: one contract (:mod:`.base`), one module per backend.

Like the activation state (:mod:`tessera.activation.state`), it goes where the
profiles go: ``jrn_*`` tables in the store's PostgreSQL, so that a timer set by
an engine on one host fires in another after the first one stops; otherwise
``activation.db`` in the data directory.
"""

from __future__ import annotations

from pathlib import Path

from tessera.activation.state import FILE_NAME, is_postgres
from tessera.journeys.state.base import (
    Instance,
    JourneyState,
    JourneyTx,
    Outboxed,
    StepMetrics,
)
from tessera.journeys.state.sqlite import SQLiteJourneyState

__all__ = ["Instance", "JourneyState", "JourneyTx", "Outboxed", "SQLiteJourneyState",
           "StepMetrics", "existing_journey_state", "open_journey_state"]


def open_journey_state(store_url: str | None, data_dir: Path) -> JourneyState:
    """Beside the store: the store's PostgreSQL, or ``activation.db`` in ``data_dir``."""
    if store_url and is_postgres(store_url):
        from tessera.journeys.state.postgres import PostgresJourneyState

        return PostgresJourneyState(store_url)
    return SQLiteJourneyState(Path(data_dir) / FILE_NAME)


def existing_journey_state(store_url: str | None, data_dir: Path) -> JourneyState | None:
    """:func:`open_journey_state`, or None where there can be nothing to read (no
    ``activation.db`` yet), so that readers do not create an empty file."""
    if not is_postgres(store_url) and not (Path(data_dir) / FILE_NAME).exists():
        return None
    return open_journey_state(store_url, data_dir)
