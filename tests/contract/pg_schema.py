"""A PostgreSQL schema of its own per test (the activation and journey state tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.services import require_postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A store URL with a fresh schema on the real server; the schema is dropped after."""
    server = require_postgres()
    schema = f"ta_{uuid.uuid4().hex[:12]}"
    yield f"{server}?schema={schema}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
