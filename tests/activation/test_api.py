"""The admin API of subscriptions: create, list, get, pause, resume, delete; and it delivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tessera.activation.signing import new_secret, verify
from tessera.api.app import create_app
from tests.activation.helpers import config_with, running, wait_for
from tests.activation.receiver import Receiver

ADMIN = {"Authorization": "Bearer ak_admin_123"}


async def test_create_list_pause_delete_and_deliver(tmp_path: Path) -> None:
    secret = new_secret()
    with Receiver() as rx:
        async with running(config_with(), tmp_path) as h:
            app = create_app(h.runtime)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as api:
                # the body, as is
                body = {"name": "crm-sync", "filter": {"types": ["com.example.membership.*"]},
                        "shape": "fat", "destination": {"type": "webhook", "url": rx.url,
                                                        "secret": secret}}
                r = await api.post("/v1/subscriptions", json=body, headers=ADMIN)
                assert r.status_code == 201, r.text
                created = r.json()
                assert created["name"] == "crm-sync" and created["origin"] == "api"
                assert created["destination"]["secret"] != secret  # masked
                assert created["stats"]["lag"] == 0
                r = await api.post("/v1/subscriptions", json=body, headers=ADMIN)
                assert r.status_code == 409
                await wait_for(lambda: "crm-sync" in h.activation.running,
                               what="the worker to pick it up")
                await h.send({"member_number": "M-9", "tier": "gold"},
                             "com.example.membership.updated", "membership")
                await wait_for(lambda: len(rx.ok()) == 1, what="the delivery")
                assert verify(secret, rx.ok()[0].headers, rx.ok()[0].body)
                assert rx.ok()[0].json["data"]["profile"]["traits"]["membership_tier"] == "gold"

                def counted() -> bool:
                    state = h.activation.state.get("crm-sync")
                    return state is not None and state.delivered == 1

                await wait_for(counted, what="the counters")
                r = await api.get("/v1/subscriptions", headers=ADMIN)
                assert r.status_code == 200
                [listed] = r.json()["subscriptions"]
                assert listed["stats"]["delivered"] == 1 and listed["stats"]["lag"] == 0

                r = await api.post("/v1/subscriptions/crm-sync/pause", headers=ADMIN)
                assert r.status_code == 200 and r.json()["paused"] is True
                await wait_for(lambda: h.activation.running["crm-sync"].runner.paused)
                r = await api.post("/v1/subscriptions/crm-sync/resume", headers=ADMIN)
                assert r.json()["paused"] is False

                r = await api.delete("/v1/subscriptions/crm-sync", headers=ADMIN)
                assert r.status_code == 204
                assert (await api.get("/v1/subscriptions/crm-sync", headers=ADMIN)
                        ).status_code == 404
                await wait_for(lambda: "crm-sync" not in h.activation.running,
                               what="the worker to stop it")
                await h.send({"member_number": "M-9", "tier": "basic"},
                             "com.example.membership.updated", "membership")
                await asyncio.sleep(0.3)
                assert len(rx.ok()) == 1


async def test_admin_key_and_validation(tmp_path: Path) -> None:
    cfg = config_with(subscriptions=[{"name": "from-config", "destination": {
        "type": "file", "path": "out.jsonl"}}])
    async with running(cfg, tmp_path) as h:
        app = create_app(h.runtime)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as api:
            body = {"name": "x", "destination": {"type": "webhook", "url": "http://127.0.0.1:1/"}}
            assert (await api.post("/v1/subscriptions", json=body)).status_code == 401
            r = await api.post("/v1/subscriptions", json=body,
                               headers={"Authorization": "Bearer rk_read_123"})
            assert r.status_code == 403
            r = await api.post("/v1/subscriptions", headers=ADMIN, json={
                "name": "x", "shape": "skinny", "filter": {"typos": []},
                "destination": {"type": "webhook", "url": "ftp://nope"}})
            assert r.status_code == 400
            fields = {e["field"] for e in r.json()["errors"]}
            assert "filter.typos" in fields and any(f.startswith("shape") for f in fields)
            r = await api.post("/v1/subscriptions", headers=ADMIN, json={
                "name": "y", "destination": "no-such-destination"})
            assert r.status_code == 400 and "no-such-destination" in r.text
            r = await api.post("/v1/subscriptions", headers=ADMIN, json={
                "name": "z", "destination": {"type": "python", "function": "nowhere:fn"}})
            assert r.status_code == 400
            r = await api.post("/v1/subscriptions", headers=ADMIN, json={
                "name": "from-config", "destination": {"type": "file", "path": "o.jsonl"}})
            assert r.status_code == 409
            assert (await api.delete("/v1/subscriptions/from-config",
                                     headers=ADMIN)).status_code == 409
            r = await api.get("/v1/subscriptions/from-config", headers=ADMIN)
            assert r.status_code == 200 and r.json()["origin"] == "config"
