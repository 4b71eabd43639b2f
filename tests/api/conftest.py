"""Fixtures for the HTTP API tests: the app in-process, and a real server for the SDKs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from tessera.api.app import create_app
from tessera.config import TesseraConfig, default_config
from tessera.runtime import Runtime
from tests.api.helpers import Api, LiveServer
from tests.processes import app_in_thread

DEMO_CONFIG = default_config()  # immutable; parsed once


async def _serve(config: TesseraConfig, data: Path) -> AsyncIterator[Api]:
    runtime = Runtime(config, data)
    app = create_app(runtime)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tessera.test"
        ) as client,
    ):
        yield Api(client, runtime)


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    # these tests are about HTTP behaviour, not surviving a power cut: skip the fsyncs
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The app with the demo configuration, driven in-process."""
    async for served in _serve(DEMO_CONFIG, tmp_path / "data"):
        yield served


@pytest.fixture
def api_with(tmp_path: Path) -> Callable[[TesseraConfig], AbstractAsyncContextManager[Api]]:
    """Build the app from another configuration: ``async with api_with(config) as api``."""

    @contextlib.asynccontextmanager
    async def build(config: TesseraConfig) -> AsyncIterator[Api]:
        async for served in _serve(config, tmp_path / "data-custom"):
            yield served

    return build


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real uvicorn server on a free port, in a background thread, without the worker."""
    config = DEMO_CONFIG
    data = tmp_path_factory.mktemp("live") / "data"
    runtime = Runtime(config, data)
    with app_in_thread(create_app(runtime)) as url:
        yield LiveServer(url, data, config)
