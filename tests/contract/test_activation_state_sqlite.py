"""The activation state contract on ``activation.db``, the embedded default."""

from __future__ import annotations

from pathlib import Path

from tessera.activation.state import ActivationState, SQLiteActivationState, open_activation_state
from tests.contract.activation_state_contract import ActivationStateContract, sub


class TestSQLiteActivationState(ActivationStateContract):
    def make_state(self, tmp_path: Path) -> ActivationState:
        return SQLiteActivationState(tmp_path / "activation.db")

    def test_without_a_postgres_store_it_is_the_data_directory_file(
            self, tmp_path: Path) -> None:
        state = open_activation_state(None, tmp_path)
        try:
            assert isinstance(state, SQLiteActivationState)
            state.create(sub("crm"), "api", True, 1.0)
        finally:
            state.close()
        assert (tmp_path / "activation.db").exists()
