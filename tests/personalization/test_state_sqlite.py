from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.personalization.state.sqlite import SQLiteState
from tests.personalization.state_contract import StateContract


class TestSQLiteState(StateContract):
    @pytest.fixture
    def state(self, tmp_path: Path) -> Iterator[SQLiteState]:
        state = SQLiteState(tmp_path / "personalization.db")
        state.migrate()
        yield state
        state.close()

    def test_a_second_process_sees_committed_state(self, tmp_path: Path) -> None:
        writer = SQLiteState(tmp_path / "p.db")
        reader = SQLiteState(tmp_path / "p.db")
        with writer.transaction() as tx:
            tx.enter("vip", "p1", 1.0)
        assert reader.memberships_of("p1") == {"vip": 1.0}
        writer.close()
        reader.close()
