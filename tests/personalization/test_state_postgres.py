from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tessera.personalization.state.postgres import PostgresState
from tests.personalization.state_contract import StateContract
from tests.services import require_postgres

pytestmark = pytest.mark.services


class TestPostgresState(StateContract):
    @pytest.fixture
    def state(self) -> Iterator[PostgresState]:
        url = require_postgres()
        schema = f"pz_{uuid.uuid4().hex[:10]}"
        state = PostgresState(f"{url}?schema={schema}")
        state.migrate()
        yield state
        state.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
