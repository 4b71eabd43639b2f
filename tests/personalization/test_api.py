"""The customer's examples end to end: events in through the HTTP API, both processors,
then segments, members, previews and next best actions over HTTP (demo configuration)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.api.app import create_app
from tessera.config import default_config
from tessera.events.envelope import iso_time
from tessera.personalization.service import PersonalizationService
from tessera.runtime import Runtime

KEY = {"Authorization": "Bearer rk_personalize_123"}
PROFILES_ONLY = {"Authorization": "Bearer rk_read_123"}
WRITE = {"roadservice": "wk_roadservice_123", "crm": "wk_crm_123", "travel": "wk_travel_123",
         "contact_center": "wk_contact_center_123", "membership": "wk_membership_123"}
_ids = itertools.count()


@dataclass
class Client:
    http: httpx.AsyncClient
    runtime: Runtime
    service: PersonalizationService

    async def send(self, source: str, what: str, data: dict[str, Any]) -> None:
        import time

        event = {"specversion": "1.0", "id": f"t-{next(_ids)}", "source": f"test/{source}",
                 "type": f"com.example.{source}.{what}", "time": iso_time(time.time()),
                 "data": data}
        response = await self.http.post(
            "/v1/events", json=event,
            headers={"Authorization": f"Bearer {WRITE[source]}",
                     "Content-Type": "application/cloudevents+json"})
        assert response.status_code in (200, 202), response.text

    async def process(self) -> None:
        stats = await self.runtime.worker().run_until_idle()
        assert stats.dead_lettered == 0
        await self.service.run_until_idle()

    async def get(self, path: str, headers: dict[str, str] = KEY, **params: Any) -> Any:
        response = await self.http.get(path, headers=headers, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def nba(self, member: str, channel: str = "contact_center", **params: Any) -> Any:
        return await self.get(f"/v1/profiles/member_number:{member}/next-best-action",
                              channel=channel, **params)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    runtime = Runtime(default_config(), tmp_path / "data")
    app = create_app(runtime)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://tessera.test") as http):
        service = PersonalizationService.from_runtime(runtime)
        try:
            yield Client(http, runtime, service)
        finally:
            service.state.close()


async def member(c: Client, number: str, consent: bool, tows: int = 0,
                 tier: str = "classic") -> None:
    await c.send("membership", "member.joined", {"member_number": number, "tier": tier})
    await c.send("crm", "contact.updated", {"member_number": number, "first_name": "Ann",
                                            "consent": {"email": consent, "sms": False}})
    for _ in range(tows):
        await c.send("roadservice", "ticket.status_changed",
                     {"member_number": number, "status": "completed", "resolution": "towed"})


async def test_roadside_plus_upgrade_for_members_towed_twice_with_consent(api: Client) -> None:
    await member(api, "M-100", consent=True, tows=2)
    await member(api, "M-200", consent=False, tows=2)
    await member(api, "M-300", consent=True, tows=1)
    await member(api, "M-400", consent=True, tows=3, tier="plus")
    await api.process()

    body = await api.nba("M-100")
    assert [a["action"] for a in body["actions"]] == ["roadside_plus_upgrade"]
    top = body["actions"][0]
    assert top["rank"] == 1 and top["channel"] == "contact_center"
    assert top["payload"] == {"offer_code": "RSPLUS-UPG", "price": 49.0}
    assert "consent to marketing_email granted" in top["reasons"]
    assert any(r.startswith("eligible: (in audience frequent_tows") for r in top["reasons"])

    # suppressed without marketing consent, and the explanation says so
    body = await api.nba("M-200", explain="true")
    assert body["actions"] == []
    assert {"action": "roadside_plus_upgrade", "stage": "consent",
            "reason": "no consent to marketing_email"} in body["rejected"]
    assert (await api.nba("M-300"))["actions"] == []  # one tow only
    assert (await api.nba("M-400"))["actions"] == []  # already on Plus

    segments = await api.get("/v1/profiles/member_number:M-100/segments")
    assert [s["segment"] for s in segments["segments"]] == ["members", "frequent_tows",
                                                            "marketing_email_consent"]
    assert segments["computed_traits"]["roadside_tows_12m"] == 2
    no_consent = await api.get("/v1/profiles/member_number:M-200/segments")
    assert [s["segment"] for s in no_consent["segments"]] == ["members", "frequent_tows"]


async def test_travel_insurance_for_travel_booked_without_insurance(api: Client) -> None:
    await member(api, "M-500", consent=True)
    await member(api, "M-600", consent=False)
    for number in ("M-500", "M-600"):
        await api.send("travel", "booking.created", {"member_number": number, "total": 3200.0,
                                                     "destination": "Lisbon"})
    await api.process()
    body = await api.nba("M-500", channel="email")
    assert [a["action"] for a in body["actions"]] == ["travel_insurance"]
    assert "+15: travel spend of 3000 or more" in body["actions"][0]["reasons"]
    assert (await api.nba("M-600", channel="email"))["actions"] == []

    # buying the insurance takes the member out of the audience: an exit event, no offer
    await api.send("travel", "insurance.purchased", {"member_number": "M-500"})
    await api.process()
    assert (await api.nba("M-500", channel="email"))["actions"] == []
    segments = await api.get("/v1/profiles/member_number:M-500/segments")
    assert "travel_without_insurance" not in [s["segment"] for s in segments["segments"]]
    exits = await read_derived(api.runtime, "segment.exited")
    assert [(e["data"]["segment"], e["data"]["reason"]) for e in exits] == [
        ("travel_without_insurance", "event")]


async def read_derived(runtime: Runtime, type_: str) -> list[dict[str, Any]]:
    import orjson

    out: list[dict[str, Any]] = []
    while batch := await runtime.bus.fetch("derived", "test-reader", 500, 0.01):
        out += [orjson.loads(d.payload) for d in batch]
        await runtime.bus.ack(batch)
    return [e for e in out if e["type"] == type_]


async def test_outcomes_feed_back_into_cooldowns_and_suppression(api: Client) -> None:
    await member(api, "M-700", consent=True, tows=2)
    await api.process()
    assert [a["action"] for a in (await api.nba("M-700"))["actions"]] == [
        "roadside_plus_upgrade"]
    await api.send("contact_center", "offer.presented",
                   {"member_number": "M-700", "action": "roadside_plus_upgrade",
                    "channel": "contact_center"})
    await api.process()
    body = await api.nba("M-700", explain="true")
    assert body["actions"] == []
    assert body["rejected"][0]["stage"] == "cap"
    assert body["rejected"][0]["reason"].startswith("cooldown: presented")
    await api.send("contact_center", "offer.accepted",
                   {"member_number": "M-700", "action": "roadside_plus_upgrade",
                    "channel": "contact_center"})
    await api.process()
    body = await api.nba("M-700", explain="true")
    assert body["rejected"][0]["stage"] == "suppressed"


async def test_segments_sizes_members_paged_and_preview(api: Client) -> None:
    for i in range(3):
        await member(api, f"M-80{i}", consent=True, tows=2)
    await member(api, "M-810", consent=True, tows=1)
    await api.send("travel", "booking.created", {"member_number": "M-810", "total": 10.0})
    await api.process()
    listed = await api.get("/v1/segments")
    sizes = {s["name"]: s["size"] for s in listed["segments"]}
    assert sizes["frequent_tows"] == 3 and sizes["members"] == 4
    assert sizes["travel_without_insurance"] == 1
    one = await api.get("/v1/segments/frequent_tows")
    assert one["size"] == 3 and one["rule"]["all"][0] == {"audience": "members"}

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await api.get("/v1/segments/frequent_tows/members", limit=2,
                             **({"cursor": cursor} if cursor else {}))
        seen += [m["profile_id"] for m in page["members"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 == len(set(seen)) and seen == sorted(seen)

    preview = await api.http.post("/v1/segments/preview", headers=KEY, json={
        "rule": {"path": "computed.roadside_tows_12m", "gte": 1}, "examples": 2})
    assert preview.status_code == 200, preview.text
    assert preview.json() | {"examples": None} == {
        "sampled": 4, "matched": 4, "profiles": 4, "estimated_size": 4, "exact": True,
        "examples": None}
    assert len(preview.json()["examples"]) == 2
    # an event-history condition no audience uses yet is counted from the timelines
    history = await api.http.post("/v1/segments/preview", headers=KEY, json={
        "rule": {"event": {"type": "com.example.travel.booking.created", "within": "7d"}},
        "sample": 2})
    assert history.json()["sampled"] == 2 and history.json()["profiles"] == 4


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), [
    ("get", "/v1/profiles/member_number:M-1/next-best-action", {}, 400, "query.channel"),
    ("get", "/v1/profiles/member_number:M-1/next-best-action",
     {"params": {"channel": "email", "limit": 0}}, 400, "query.limit"),
    ("get", "/v1/segments/frequent_tows/members", {"params": {"limit": 5000}}, 400,
     "query.limit"),
    ("post", "/v1/segments/preview", {"json": {"rule": {"path": "traits.x"}}}, 400, "rule"),
    ("post", "/v1/segments/preview", {"json": {"rule": {"audience": "nope"}}}, 400, "rule"),
    ("post", "/v1/segments/preview",
     {"json": {"rule": {"consent": "x"}, "sample": 0}}, 400, "sample"),
    ("post", "/v1/segments/preview", {"json": {"rule": {"consent": "x"}, "colour": 1}}, 400,
     "colour"),
    ("post", "/v1/segments/preview", {"content": b"[1"}, 400, None),
])
async def test_bad_requests_name_the_field_and_reason(api: Client, method: str, path: str,
                                                      kwargs: dict[str, Any], status: int,
                                                      field: str | None) -> None:
    await member(api, "M-1", consent=True)
    await api.process()
    response = await api.http.request(method.upper(), path, headers=KEY, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"]
    if field is not None:
        assert any(e["field"] == field and e["reason"] for e in body["errors"]), body


async def test_scopes_and_unknown_things(api: Client) -> None:
    await member(api, "M-1", consent=True)
    await api.process()
    nba = "/v1/profiles/member_number:M-1/next-best-action?channel=email"
    assert (await api.http.get(nba, headers=PROFILES_ONLY)).status_code == 403
    assert (await api.http.get("/v1/segments", headers=PROFILES_ONLY)).status_code == 403
    assert (await api.http.get(nba)).status_code == 401
    admin = {"Authorization": "Bearer ak_admin_123"}
    assert (await api.http.get(nba, headers=admin)).status_code == 200
    missing = await api.http.get("/v1/profiles/member_number:nobody/segments", headers=KEY)
    assert missing.status_code == 404
    unknown = await api.http.get("/v1/segments/nope/members", headers=KEY)
    assert unknown.status_code == 404 and "frequent_tows" in unknown.json()["message"]


async def test_answers_match_the_published_schemas(api: Client) -> None:
    import jsonschema

    await member(api, "M-900", consent=True, tows=2)
    await api.process()
    doc = (await api.http.get("/openapi.json")).json()

    def check(method: str, path: str, body: Any) -> None:
        schema = doc["paths"][path][method]["responses"]["200"]["content"][
            "application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": doc["components"]})

    nba_path = "/v1/profiles/{identifier}/next-best-action"
    names = [p["name"] for p in doc["paths"][nba_path]["get"]["parameters"]]
    assert {"channel", "limit", "explain"} <= set(names)
    check("get", nba_path, await api.nba("M-900", explain="true"))
    check("get", "/v1/profiles/{identifier}/segments",
          await api.get("/v1/profiles/member_number:M-900/segments"))
    check("get", "/v1/segments", await api.get("/v1/segments"))
    check("get", "/v1/segments/{name}", await api.get("/v1/segments/frequent_tows"))
    check("get", "/v1/segments/{name}/members",
          await api.get("/v1/segments/frequent_tows/members"))
    preview = await api.http.post("/v1/segments/preview", headers=KEY,
                                  json={"rule": {"consent": "marketing_email"}})
    check("post", "/v1/segments/preview", preview.json())
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        check("get", "/v1/segments", {"segments": [{"name": "x"}]})
