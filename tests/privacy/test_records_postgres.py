from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tessera.privacy.records.base import TrustRecords
from tessera.privacy.records.postgres import PostgresRecords
from tests.contract.test_store_postgres import schema_for
from tests.privacy.records_contract import RecordsContract
from tests.services import require_postgres

pytestmark = pytest.mark.services


class TestPostgresRecords(RecordsContract):
    url: str
    schemas: set[str]

    @pytest.fixture(autouse=True)
    def _schemas(self) -> Iterator[None]:
        self.url = require_postgres()
        self.schemas = set()
        yield
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(name)))

    def make_records(self, tmp_path: Path) -> TrustRecords:
        schema = schema_for(tmp_path, "trust")
        self.schemas.add(schema)
        return PostgresRecords(self.url, schema=schema)
