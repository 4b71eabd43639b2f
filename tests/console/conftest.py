"""Fixtures for the console tests: the app in-process with the scenario loaded."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tessera.api.app import create_app
from tessera.config import default_config
from tessera.runtime import Runtime
from tests.console.scenario import EVENTS, cloudevent, put_dead_letters

ADMIN_KEY = "ak_admin_123"
READ_KEY = "rk_read_123"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Console:
    client: httpx.AsyncClient
    runtime: Runtime

    async def login(self, key: str = ADMIN_KEY) -> httpx.Response:
        return await self.client.post("/console/login", content=f"key={key}&next=/console",
                                      headers=FORM)

    async def csrf(self) -> str:
        page = await self.client.get("/console/dead-letters")
        match = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', page.text)
        assert match, page.text[:500]
        return match.group(1)

    async def process(self) -> None:
        await self.runtime.worker().run_until_idle()

    def resolve(self, identifier: str) -> str:
        pid = self.runtime.store.resolve(identifier)
        assert pid is not None, identifier
        return pid


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    """The app with the scenario processed (a merge, two dead letters); not logged in."""
    runtime = Runtime(default_config(), tmp_path / "data")
    app = create_app(runtime)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                          base_url="http://tessera.test") as client,
    ):
        await put_dead_letters(runtime.bus)
        for key, event in EVENTS:
            response = await client.post(
                "/v1/events", json=cloudevent(event),
                headers={"Authorization": f"Bearer {key}",
                         "Content-Type": "application/cloudevents+json"})
            assert response.status_code == 202, response.text
        await runtime.worker().run_until_idle()
        yield Console(client, runtime)
