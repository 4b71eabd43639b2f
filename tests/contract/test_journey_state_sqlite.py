"""The journey state contract on ``activation.db``, the embedded default."""

from __future__ import annotations

from pathlib import Path

from tessera.journeys.state import (
    JourneyState,
    SQLiteJourneyState,
    existing_journey_state,
    open_journey_state,
)
from tests.contract.journey_state_contract import JourneyStateContract


class TestSQLiteJourneyState(JourneyStateContract):
    def make_state(self, tmp_path: Path) -> JourneyState:
        return SQLiteJourneyState(tmp_path / "activation.db")

    def test_without_a_postgres_store_it_is_the_data_directory_file(
            self, tmp_path: Path) -> None:
        assert existing_journey_state(None, tmp_path) is None  # nothing there: no file made
        assert not (tmp_path / "activation.db").exists()
        state = open_journey_state(None, tmp_path)
        assert isinstance(state, SQLiteJourneyState)
        state.close()
        found = existing_journey_state(None, tmp_path)
        assert isinstance(found, SQLiteJourneyState)
        found.close()
