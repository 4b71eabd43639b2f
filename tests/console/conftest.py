"""Fixtures for the console tests: the app in-process with the scenario loaded."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.activation.api import activation_state
from tessera.activation.service import ActivationService, overview
from tessera.api.app import create_app
from tessera.config import default_config, parse_config
from tessera.journeys.report import counts_in
from tessera.personalization.service import PersonalizationService
from tessera.runtime import Runtime
from tests.activation.receiver import Receiver
from tests.console.scenario import EVENTS, cloudevent, put_dead_letters
from tests.console.sections import (
    EXTRA_EVENTS,
    HOOK,
    HOOK_DEAD_LETTERS,
    queue_review_pair,
    raw_config,
)

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
        """The profiles processor, then the personalization processor (segments)."""
        await self.runtime.worker().run_until_idle()
        service = PersonalizationService.from_runtime(self.runtime, profile_wait_seconds=0.2)
        try:
            await service.run_until_idle()
        finally:
            service.state.close()

    def resolve(self, identifier: str) -> str:
        pid = self.runtime.store.resolve(identifier)
        assert pid is not None, identifier
        return pid

    async def post(self, key: str, event: dict[str, object]) -> None:
        response = await self.client.post(
            "/v1/events", json=cloudevent(event),
            headers={"Authorization": f"Bearer {key}",
                     "Content-Type": "application/cloudevents+json"})
        assert response.status_code == 202, response.text

    async def subscription(self, name: str) -> dict[str, Any]:
        [found] = await overview(self.runtime.config, self.runtime.bus,
                                 activation_state(self.runtime), name)
        return found


async def wait_until(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 60.0) -> None:
    """Poll an async ``check`` until it returns True."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


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
        console = Console(client, runtime)
        await console.process()
        yield console


@dataclass
class Sections(Console):
    hook: Receiver
    activation: ActivationService


@contextlib.asynccontextmanager
async def _backend(kind: str) -> AsyncIterator[tuple[str | None, str | None]]:
    """``(bus URL, store URL)``: the embedded files, or NATS and PostgreSQL with a stream
    prefix and a schema of their own (removed afterwards)."""
    if kind == "embedded":
        yield None, None
        return
    from tessera.bus.nats import delete_streams
    from tests.scaleout.servers import shared_nats_url, shared_postgres, unique_name
    from tests.services import require_nats

    server = require_nats()
    prefix = f"tc{unique_name()}"
    try:
        with shared_postgres() as schema:
            yield shared_nats_url(prefix), schema.store_url
    finally:
        await delete_streams(server, prefix.upper())


@pytest.fixture(params=["embedded", pytest.param("nats+postgres", marks=pytest.mark.services)])
async def sections(request: pytest.FixtureRequest, tmp_path: Path
                   ) -> AsyncIterator[Sections]:
    """The scenario plus subscriptions, a journey, a catalog and a review candidate, with the
    profiles worker and the activation processor running; not logged in. On the embedded
    bus and store, and on NATS and PostgreSQL."""
    failing = [True]
    async with _backend(request.param) as (bus_url, store_url):
        with Receiver(lambda r: 503 if failing[0] else 200) as hook:
            runtime = Runtime(parse_config(raw_config(hook.url)), tmp_path / "data",
                              bus_url=bus_url, store_url=store_url)
            app = create_app(runtime)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://tessera.test") as client,
            ):
                await put_dead_letters(runtime.bus)
                worker = runtime.worker()
                activation = ActivationService.from_runtime(runtime, refresh_seconds=0.1,
                                                             profile_wait_seconds=0.5)
                tasks = [asyncio.create_task(worker.run(idle_timeout=0.05)),
                         asyncio.create_task(activation.run())]
                try:
                    out = Sections(client, runtime, hook, activation)
                    for key, event in [*EVENTS, *EXTRA_EVENTS]:
                        await out.post(key, event)

                    async def settled() -> bool:
                        stats = (await out.subscription(HOOK))["stats"]
                        [welcome] = counts_in(runtime.config.journeys, runtime.data_dir,
                                              runtime.store_url)
                        whole = welcome["steps"]["*"]
                        return bool(stats["dead_lettered"] == HOOK_DEAD_LETTERS
                                    and whole["entered"] == 2 and whole["completed"] == 1
                                    and await activation.wait_idle(0.01))

                    await wait_until(settled, "the CRM deliveries to be dead-lettered")
                    failing[0] = False
                    queue_review_pair(runtime.data_dir, out.resolve("member_number:M-2002"),
                                      out.resolve("user_id:u-bob"))
                    yield out
                finally:
                    worker.stop()
                    activation.stop()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    activation.state.close()
