"""The erasure target on PostgreSQL: after erasing Jane, no row of any table of the
installation's schema (profiles, traits, timeline, outbox, trust records, activation and
personalization state) holds one of her identifiers or trait values; Bob's are still there.

The scan reads every column of every row as the database returns it (text, jsonb,
bytea). What a query cannot see (dead row versions in the data files, the write-ahead
log, backups) is described in docs/privacy.md. With encryption at rest on, the tables
hold no clear value of her personal traits even before the erasure.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

from tessera.api.app import create_app
from tessera.config import EncryptionConfig, PrivacyConfig, TesseraConfig
from tessera.runtime import Runtime
from tests.api.conftest import DEMO_CONFIG
from tests.api.helpers import Api
from tests.privacy.people import (
    BOB_EMAIL,
    JANE_CITY,
    JANE_EMAIL,
    JANE_NAME,
    JANE_VALUES,
    erase,
    event,
    populate,
    send,
)
from tests.services import require_postgres

pytestmark = pytest.mark.services
KEYS = "pg1:" + base64.b64encode(b"p" * 32).decode()


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return orjson.dumps(value)
    return str(value).encode()


def scan_schema(url: str, schema: str) -> tuple[bytes, list[str]]:
    """Every value of every row of every table in the schema, and the tables' names."""
    chunks: list[bytes] = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type = 'BASE TABLE' ORDER BY table_name", [schema])]
        for table in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema),
                                                          sql.Identifier(table))
            for row in conn.execute(query):
                chunks += [_as_bytes(v) for v in row]
    return b"\n".join(chunks), tables


async def _serve(config: TesseraConfig, data: Path, store_url: str) -> AsyncIterator[Api]:
    runtime = Runtime(config, data, store_url=store_url)
    app = create_app(runtime)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                          base_url="http://tessera.test") as client,
    ):
        yield Api(client, runtime)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_after_erasure_no_postgres_row_holds_jane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    url = require_postgres()
    schema = "scan_" + hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest()
    config = DEMO_CONFIG
    if encrypted:
        monkeypatch.setenv("TESSERA_PII_KEYS", KEYS)
        config = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(
            encryption=EncryptionConfig(enabled=True, traits=["name", "city"]))})
    try:
        async for api in _serve(config, tmp_path / "data", f"{url}?schema={schema}"):
            await populate(api)
            before, _ = scan_schema(url, schema)
            assert JANE_EMAIL.encode() in before  # the scan sees her while she is there
            if encrypted:
                assert JANE_NAME.encode() not in before and JANE_CITY.encode() not in before
                jane = await api.profile(f"email:{JANE_EMAIL}")
                assert jane["traits"]["name"]["value"] == JANE_NAME
            else:
                assert JANE_NAME.encode() in before and JANE_CITY.encode() in before
            report = await erase(api, f"email:{JANE_EMAIL}")
            assert report["profile_found"] is True
            # a late event carrying her identifier is suppressed, not a new Jane
            await send(api, "wk_web_123", event("late-1", {"email": JANE_EMAIL,
                                                           "traits": {"name": JANE_NAME}}))
            await api.process()
        after, tables = scan_schema(url, schema)
        assert {"profiles", "identities", "traits", "timeline", "outbox"} <= set(tables)
        for value in JANE_VALUES:
            assert value.encode() not in after, (value, tables)
        assert BOB_EMAIL.encode() in after
        files = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
        for value in JANE_VALUES:  # the embedded bus beside the PostgreSQL store
            assert value.encode() not in files, value
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))
