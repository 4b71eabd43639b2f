"""Activation on the scale-out, end to end: NATS JetStream bus + PostgreSQL store, and
three runtimes with data directories of their own (nothing shared through files).

- an API runtime (ingest, the admin API, the profiles processor);
- activation worker 1, which enters a customer into a journey and stops before
  the journey's timer is due;
- activation worker 2, started afterwards on another data directory: it runs the
  subscription created through the API runtime (signed webhooks to a real HTTP
  receiver) and fires the timer worker 1 set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.activation.service import ActivationService
from tessera.activation.signing import new_secret, verify
from tessera.api.app import create_app
from tessera.bus.nats import delete_streams
from tessera.config import TesseraConfig
from tessera.runtime import Runtime
from tests.activation.helpers import config_with, wait_for
from tests.activation.receiver import Receiver
from tests.activation.test_journeys import cart_journey
from tests.scaleout.servers import shared_nats_url, shared_postgres, unique_name
from tests.services import require_nats

pytestmark = pytest.mark.services

ADMIN = {"Authorization": "Bearer ak_admin_123"}
WAIT = 3.0
"""The journey's wait: long enough to stop worker 1 before it is due."""


@contextlib.asynccontextmanager
async def activation_worker(cfg: TesseraConfig, data: Path, bus_url: str,
                            store_url: str) -> AsyncIterator[ActivationService]:
    """An activation processor in a runtime of its own, as ``tessera worker
    --processors activation`` on another host runs it."""
    runtime = Runtime(cfg, data, bus_url=bus_url, store_url=store_url)
    await runtime.start()
    service = ActivationService.from_runtime(runtime, refresh_seconds=0.1)
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop()
        await task
        service.state.close()
        service.journey_state.close()
        await runtime.close()  # gives its partitions back to the other members


def cloudevent(id_: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id_, "source": "crm", "type": type_, "data": data}


async def ingest(api: httpx.AsyncClient, key: str, event: dict[str, Any]) -> None:
    r = await api.post("/v1/events", json=event, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"})
    assert r.status_code in (200, 202), r.text


async def journeys(api: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    r = await api.get("/v1/journeys", headers=ADMIN)
    assert r.status_code == 200, r.text
    [cart] = [j for j in r.json()["journeys"] if j["name"] == "cart"]
    return dict(cart["steps"])


async def test_api_on_one_runtime_workers_on_others(tmp_path: Path) -> None:
    secret = new_secret()
    cfg = config_with(journeys=[cart_journey(f"{WAIT}s")])
    async with own_streams() as bus_url:
        with shared_postgres() as pg, Receiver() as rx:
            await scenario(tmp_path, cfg, secret, bus_url, pg.store_url, rx)


@contextlib.asynccontextmanager
async def own_streams() -> AsyncIterator[str]:
    """A bus URL with a stream prefix of its own on the machine's NATS; deleted after."""
    prefix = f"ta{unique_name()}"
    try:
        yield shared_nats_url(prefix)
    finally:
        await delete_streams(require_nats(), prefix.upper())


async def scenario(tmp_path: Path, cfg: TesseraConfig, secret: str, bus_url: str,
                   store_url: str, rx: Receiver) -> None:
    api_runtime = Runtime(cfg, tmp_path / "api", bus_url=bus_url, store_url=store_url)
    await api_runtime.start()
    worker = api_runtime.worker()
    processing = asyncio.create_task(worker.run(idle_timeout=0.05))
    transport = httpx.ASGITransport(app=create_app(api_runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            # worker 1 enters a customer into the journey, then stops
            async with activation_worker(cfg, tmp_path / "w1", bus_url, store_url) as w1:
                await ingest(api, "wk_web_123", {
                    **cloudevent("cart-1", "cart_updated",
                                 {"email": "jane@example.com", "value": 42}),
                    "source": "web"})
                deadline = time.monotonic() + 30
                while (await journeys(api))["wait"]["waiting"] != 1:
                    assert time.monotonic() < deadline, "the customer never entered"
                    await asyncio.sleep(0.05)
                pid = api_runtime.store.resolve("email:jane@example.com") or ""
                [instance] = w1.journey_state.instances(pid)
                due = instance.entered_at + WAIT
                assert w1.engine is not None
            assert w1.engine.stats.entered == 1 and w1.engine.stats.timers_fired == 0
            assert time.time() < due - 0.5  # stopped well before it is due

            # subscriptions created through the API runtime, while no worker runs
            for body in (
                {"name": "crm-sync", "filter": {"types": ["com.example.crm.*"]},
                 "shape": "event", "destination": {"type": "webhook", "url": rx.url,
                                                   "secret": secret}},
                {"name": "reminders", "filter": {"types": ["x.reminder"]},
                 "topics": ["derived"], "shape": "event",
                 "destination": {"type": "webhook", "url": rx.url, "secret": secret}},
            ):
                r = await api.post("/v1/subscriptions", json=body, headers=ADMIN)
                assert r.status_code == 201, r.text

            # worker 2, on another data directory, delivers both and fires the timer
            async with activation_worker(cfg, tmp_path / "w2", bus_url, store_url) as w2:
                await wait_for(lambda: {"crm-sync", "reminders"} <= set(w2.running),
                               what="worker 2 to run the API's subscriptions")
                await ingest(api, "wk_crm_123", cloudevent(
                    "c-1", "com.example.crm.contact.updated",
                    {"email": "Jane@Example.com", "member_number": "M-1001"}))
                await wait_for(lambda: len(rx.ok()) == 2, timeout=WAIT + 20,
                               what="the webhook and the reminder")
                assert w2.engine is not None
                fired_in_w2 = w2.engine.stats.timers_fired

                def counted() -> bool:
                    got = [w2.state.get(n) for n in ("crm-sync", "reminders")]
                    return all(s is not None and s.delivered == 1 for s in got)

                await wait_for(counted, what="the delivery counters")
                r = await api.get("/v1/subscriptions/crm-sync", headers=ADMIN)
                assert r.json()["stats"]["delivered"] == 1  # written by w2, read by the API
                counts = await journeys(api)
            await asyncio.sleep(0.3)
    finally:
        worker.stop()
        await processing
        await api_runtime.close()
    assert fired_in_w2 == 1
    by_type = {r.json["type"]: r for r in rx.ok()}
    assert set(by_type) == {"com.example.crm.contact.updated", "x.reminder"}
    for received in rx.ok():
        assert verify(secret, received.headers, received.body)  # Standard Webhooks signature
    reminder = by_type["x.reminder"]
    assert reminder.json["data"] == {"email": "jane@example.com", "value": 42}
    assert reminder.at >= due  # not early
    assert counts["wait"] == {"entered": 1, "waiting": 0, "completed": 1, "exited": 0}
    assert len(rx.all()) == 2  # nothing delivered twice
    for name in ("api", "w1", "w2"):
        assert not (tmp_path / name / "activation.db").exists()
