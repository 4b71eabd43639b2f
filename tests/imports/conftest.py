"""Fixtures for the batch-import tests: a runtime on a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.config import parse_config
from tessera.runtime import Runtime

CONFIG = parse_config({
    "sources": [
        {"name": "crm", "write_key": "wk_crm_123", "priority": 0},
        {"name": "membership", "write_key": "wk_membership_123", "priority": 10},
    ],
    "api_keys": [
        {"key": "ak_admin_123", "scopes": ["admin"]},
        {"key": "rk_read_123", "scopes": ["profiles:read"]},
    ],
    "identity": {"identifiers": [
        {"type": "member_number", "limit": 1, "priority": 1, "paths": ["data.member_number"]},
    ]},
})


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(CONFIG, tmp_path / "data")
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()
