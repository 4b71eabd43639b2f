"""The activation state contract on PostgreSQL, plus its versioned migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.activation.state import ActivationState, open_activation_state
from tessera.activation.state import migrations as pg_migrations
from tessera.activation.state.postgres import HISTORY, MIGRATIONS, PostgresActivationState
from tessera.store.postgres import parse_url
from tests.contract.activation_state_contract import ActivationStateContract, sub
from tests.contract.pg_schema import pg_url

__all__ = ["pg_url"]

pytestmark = pytest.mark.services


class TestPostgresActivationState(ActivationStateContract):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url: str) -> None:
        self.url = pg_url

    def make_state(self, tmp_path: Path) -> ActivationState:
        return PostgresActivationState(self.url)

    def test_a_postgres_store_url_puts_it_in_that_schema(self, tmp_path: Path) -> None:
        state = open_activation_state(self.url, tmp_path)
        try:
            assert isinstance(state, PostgresActivationState)
            state.create(sub("crm"), "api", True, 1.0)
        finally:
            state.close()
        assert not (tmp_path / "activation.db").exists()
        conninfo, settings = parse_url(self.url, {})
        assert pg_migrations.applied(conninfo, settings.schema, HISTORY) == [
            m.version for m in MIGRATIONS]

    def test_migrating_again_applies_nothing(self) -> None:
        conninfo, settings = parse_url(self.url, {})
        first = pg_migrations.apply(conninfo, settings.schema, HISTORY, MIGRATIONS)
        assert first == [m.version for m in MIGRATIONS]
        assert pg_migrations.apply(conninfo, settings.schema, HISTORY, MIGRATIONS) == []
