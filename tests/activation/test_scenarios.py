"""The customer's three scenarios end to end: events through the real ingest API, the
profiles processor, the activation processor, and a real HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tessera.activation.signing import verify
from tessera.api.app import create_app
from tessera.config import TesseraConfig, parse_config
from tests.activation.helpers import Harness, running, wait_for
from tests.activation.receiver import Receiver

EXAMPLE = Path(__file__).parents[2] / "examples" / "activation" / "tessera.yaml"


def example_config(receiver: Receiver, cart_wait: str = "600ms") -> TesseraConfig:
    raw = yaml.safe_load(EXAMPLE.read_text())
    base = receiver.url.rsplit("/", 1)[0]
    for dest in raw["destinations"].values():
        dest["url"] = dest["url"].replace("http://127.0.0.1:9100", base)
    raw["journeys"][0]["steps"][0]["wait"]["for"] = cart_wait  # 30 minutes in production
    return parse_config(raw)


@contextlib.asynccontextmanager
async def scenario(
    tmp_path: Path, rx: Receiver
) -> AsyncIterator[tuple[Harness, httpx.AsyncClient]]:
    async with running(example_config(rx), tmp_path) as h:
        app = create_app(h.runtime)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://tessera.test") as client:
            yield h, client


async def ce(client: httpx.AsyncClient, key: str, event_id: str, type_: str,
             data: dict[str, Any], source: str = "https://systems.example.com") -> None:
    body = {"specversion": "1.0", "id": event_id, "source": source, "type": type_, "data": data}
    r = await client.post("/v1/events", json=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"})
    assert r.status_code == 202, r.text


async def track(client: httpx.AsyncClient, message_id: str, user_id: str, event: str,
                properties: dict[str, Any]) -> None:
    r = await client.post("/v1/track", json={
        "messageId": message_id, "userId": user_id, "event": event,
        "properties": properties}, headers={"Authorization": "Bearer wk_web_123"})
    assert r.status_code == 200, r.text


def secret_of(h: Harness, destination: str) -> str:
    secret = h.runtime.config.destinations[destination].secret  # type: ignore[union-attr]
    assert secret
    return secret


async def test_abandoned_cart_reminder_and_checkout_in_time(tmp_path: Path) -> None:
    with Receiver() as rx:
        async with scenario(tmp_path, rx) as (h, client):
            for user, email in (("u-1", "ann@example.com"), ("u-2", "bob@example.com")):
                r = await client.post("/v1/identify", json={
                    "messageId": f"id-{user}", "userId": user,
                    "traits": {"email": email, "first_name": email[:3].title()}},
                    headers={"Authorization": "Bearer wk_web_123"})
                assert r.status_code == 200
            await track(client, "c1", "u-1", "cart_updated", {"value": 59.9, "items": 2})
            await track(client, "c2", "u-2", "cart_updated", {"value": 12.0, "items": 1})
            await track(client, "c3", "u-2", "checkout_completed", {"order_id": "o-9"})
            await wait_for(lambda: len(rx.ok()) >= 1, what="the marketing step")
            await wait_for(lambda: h.activation.journey_state.metrics() and all(
                m.waiting == 0 for m in h.activation.journey_state.metrics()), what="journeys")
            await asyncio.sleep(0.5)
            got = rx.ok()
            metrics = {(m.journey, m.step): m for m in h.activation.journey_state.metrics()}
    assert len(got) == 1
    req = got[0]
    assert req.path == "/marketing"
    assert verify(secret_of(h, "marketing"), req.headers, req.body)
    body = req.json
    assert body["type"] == "tessera.journey.action"
    assert body["data"] == {"campaign": "abandoned-cart", "step": "reminder-1",
                            "email": "ann@example.com", "first_name": "Ann",
                            "cart_value": 59.9, "cart_items": 2}
    assert metrics[("abandoned-cart", "*")].exited == 1  # bob checked out in time
    assert metrics[("abandoned-cart", "*")].completed == 1
    assert metrics[("abandoned-cart", "send-reminder")].completed == 1


async def test_roadside_driver_assigned_notifies_on_the_preferred_channel(
        tmp_path: Path) -> None:
    with Receiver() as rx:
        async with scenario(tmp_path, rx) as (h, client):
            await ce(client, "wk_membership_123", "m-1", "com.example.membership.updated",
                     {"member_number": "M-1001", "first_name": "Carla",
                      "email": "carla@example.com", "phone": "+1 415 555 0134",
                      "preferred_channel": "sms"})
            await ce(client, "wk_roadservice_123", "t-1", "com.example.roadservice.ticket.updated",
                     {"member_number": "M-1001", "ticket_id": "RS-77", "status": "opened"})
            await ce(client, "wk_roadservice_123", "t-2", "com.example.roadservice.ticket.updated",
                     {"member_number": "M-1001", "ticket_id": "RS-77",
                      "status": "driver_assigned", "eta_minutes": 25})
            await wait_for(lambda: any(r.path == "/notifications" for r in rx.ok()))
            await asyncio.sleep(0.3)
    notes = [r for r in rx.ok() if r.path == "/notifications"]
    assert len(notes) == 1  # "opened" is no notification
    assert verify(secret_of(h, "notifications"), notes[0].headers, notes[0].body)
    assert notes[0].json["data"] == {
        "channel": "sms", "to": "+14155550134",
        "message": "Your driver arrives in 25 minutes", "ticket": "RS-77",
        "member_number": "M-1001"}


async def test_membership_change_syncs_only_the_changed_fields(tmp_path: Path) -> None:
    with Receiver() as rx:
        async with scenario(tmp_path, rx) as (h, client):
            await ce(client, "wk_membership_123", "m-1", "com.example.membership.created",
                     {"member_number": "M-2002", "first_name": "Dan",
                      "address": "1 Old Road", "tier": "basic"})
            await wait_for(lambda: len([r for r in rx.ok() if r.path == "/member-sync"]) == 1)
            await ce(client, "wk_membership_123", "m-2", "com.example.membership.updated",
                     {"member_number": "M-2002", "first_name": "Dan",
                      "address": "9 New Street", "tier": "basic"})
            await ce(client, "wk_membership_123", "m-3", "com.example.membership.updated",
                     {"member_number": "M-2002", "email": "dan@example.com"})
            # a change from another system is not the membership app's business
            await ce(client, "wk_web_123", "w-1", "com.example.web.profile_edited",
                     {"member_number": "M-2002", "preferred_channel": "email"})
            await wait_for(lambda: len([r for r in rx.ok() if r.path == "/member-sync"]) == 3)
            await asyncio.sleep(0.3)
            pid = h.runtime.store.resolve("member_number:M-2002")
    syncs = [r for r in rx.ok() if r.path == "/member-sync"]
    assert all(verify(secret_of(h, "membership-app"), r.headers, r.body) for r in syncs)
    bodies = [r.json["data"] for r in syncs]
    assert bodies[1] == {"profile_id": pid, "member_number": "M-2002",
                         "changed": {"address": {"old": "1 Old Road", "new": "9 New Street"}}}
    assert bodies[2] == {"profile_id": pid, "member_number": "M-2002",
                         "changed": {"email": {"old": None, "new": "dan@example.com"}}}
    assert len(syncs) == 3
