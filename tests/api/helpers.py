"""Helpers for the HTTP API tests: keys, auth headers, events, and handles on the app."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tessera.config import TesseraConfig
from tessera.runtime import Runtime

WRITE_KEY = "wk_web_123"
OTHER_WRITE_KEY = "wk_app_123"
READ_KEY = "rk_read_123"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{key}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def ce(event_id: str = "e1", **attrs: Any) -> dict[str, Any]:
    """A valid structured-mode CloudEvent; ``attrs`` override or add attributes."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "https://shop.example.com",
        "type": "com.example.order.placed",
        "time": "2026-01-02T03:04:05Z",
        "data": {"userId": "u-1", "total": 12.5},
    }
    event.update(attrs)
    return event


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime

    async def bus_count(self) -> int:
        """Events durable on the bus (deduplicated)."""
        count: int = await self.runtime.bus.count("events")  # type: ignore[attr-defined]
        return count

    async def process(self) -> None:
        """Run the profiles processor until it has applied everything on the bus."""
        stats = await self.runtime.worker().run_until_idle()
        assert stats.dead_lettered == 0

    async def profile(self, identifier: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/profiles/{identifier}", headers=bearer(READ_KEY))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    config: TesseraConfig

    def process(self) -> None:
        """Run the processor as a separate runtime on the server's data, like `tessera worker`."""

        async def run() -> None:
            runtime = Runtime(self.config, self.data_dir)
            await runtime.start()
            try:
                stats = await runtime.worker().run_until_idle()
                assert stats.dead_lettered == 0
            finally:
                await runtime.close()

        asyncio.run(run())

    def get(self, path: str, key: str = READ_KEY) -> httpx.Response:
        return httpx.get(self.url + path, headers=bearer(key), timeout=10)
