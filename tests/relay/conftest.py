"""Fixtures of the relay tests: a real Tessera server, PostgreSQL (shared and a logical one)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tessera.api.app import create_app
from tessera.config import TesseraConfig, parse_config
from tessera.runtime import Runtime
from tests.processes import app_in_thread
from tests.relay.pgcluster import shared_logical_cluster

RELAY_CONFIG = {
    "sources": [{"name": "membership", "write_key": "wk_membership_123"},
                {"name": "crm", "write_key": "wk_crm_123"}],
    "api_keys": [{"key": "rk_read_123", "scopes": ["profiles:read"]}],
    "identity": {"identifiers": [{"type": "member_number", "limit": 1, "priority": 1,
                                  "paths": ["data.after.member_number",
                                            "data.before.member_number"]}]},
}


@dataclass
class Server:
    url: str
    data_dir: Path
    config: TesseraConfig

    def events(self) -> list[dict[str, Any]]:
        """The envelopes on the bus's ``events`` topic, in log order."""
        conn = sqlite3.connect(f"file:{self.data_dir / 'bus.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("SELECT payload FROM log WHERE topic = 'events' ORDER BY seq")
            return [orjson.loads(r[0]) for r in rows.fetchall()]
        finally:
            conn.close()


def serve(config: TesseraConfig, data: Path) -> Iterator[Server]:
    runtime = Runtime(config, data)
    with app_in_thread(create_app(runtime)) as url:
        yield Server(url, data, config)


@pytest.fixture
def tessera_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
    yield from serve(parse_config(RELAY_CONFIG), tmp_path / "tessera")


@pytest.fixture(scope="session")
def logical_pg() -> Iterator[str]:
    """A private PostgreSQL cluster with wal_level=logical (never the shared one)."""
    with shared_logical_cluster() as dsn:
        yield dsn
