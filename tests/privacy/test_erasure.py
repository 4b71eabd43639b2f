"""Data subject requests over HTTP: erasure of the whole resolved person, suppression of
late events, access export, the audit log, and who may ask."""

from __future__ import annotations

import asyncio

import orjson

from tessera.bus.base import Message
from tessera.config import PrivacyConfig
from tessera.events import DERIVED_TOPIC
from tests.api.conftest import DEMO_CONFIG
from tests.api.helpers import READ_KEY, Api, bearer
from tests.privacy.people import (
    ADMIN,
    BOB_EMAIL,
    JANE_EMAIL,
    JANE_NAME,
    JANE_PHONE,
    JANE_USER,
    erase,
    event,
    populate,
    send,
)


async def _status(api: Api, identifier: str) -> int:
    response = await api.client.get(f"/v1/profiles/{identifier}", headers=bearer(READ_KEY))
    return response.status_code


async def test_erasure_removes_every_linked_identifier_and_keeps_bob(api: Api) -> None:
    await populate(api)
    jane = await api.profile(f"email:{JANE_EMAIL}")
    assert {i["type"] for i in jane["identities"]} >= {"email", "user_id", "phone"}
    report = await erase(api, f"phone:{JANE_PHONE}")
    assert report["profile_found"] is True
    assert report["identifiers"] == 3 and report["events"] == 3
    assert len(report["profile_ids"]) == 2  # the merged-away profile too
    assert report["bus_messages"] >= 3
    for identifier in (f"email:{JANE_EMAIL}", f"user_id:{JANE_USER}", f"phone:{JANE_PHONE}",
                       *report["profile_ids"]):
        assert await _status(api, identifier) == 404, identifier
    bob = await api.profile(f"email:{BOB_EMAIL}")
    assert bob["traits"]["name"]["value"] == "Bob"


async def test_subscribers_are_told_with_profile_erased(api: Api) -> None:
    await populate(api)
    report = await erase(api, f"email:{JANE_EMAIL.upper()}")  # normalized like ingest does
    seen = []
    while batch := await api.runtime.bus.fetch(DERIVED_TOPIC, "test-subscriber", 100, 0.2):
        seen += [orjson.loads(d.payload) for d in batch]
        await api.runtime.bus.ack(batch)
    erased = [e for e in seen if e["type"] == "profile.erased"]
    assert len(erased) == 1
    assert erased[0]["data"]["profile_id"] in report["profile_ids"]
    assert erased[0]["data"]["request_id"] == report["request_id"]
    assert JANE_EMAIL not in str(seen) and JANE_NAME not in str(seen)


async def test_late_events_with_an_erased_identifier_are_dropped(api: Api) -> None:
    await populate(api)
    await erase(api, f"email:{JANE_EMAIL}")
    # at ingest ...
    await send(api, "wk_crm_123", event("late-1", {"email": JANE_EMAIL, "traits": {
        "name": JANE_NAME}}))
    # ... and one already on the bus (accepted while the erasure ran) at the processor
    late = event("late-2", {"userId": JANE_USER})
    from tessera.events.cloudevents import parse_structured

    parsed = parse_structured(orjson.loads(late), "crm", 1.0, api.runtime.extractor)
    await api.runtime.bus.publish("events", [Message(e.uid, e.partition_key, e.to_json())
                                             for e in parsed])
    await api.process()
    assert await _status(api, f"email:{JANE_EMAIL}") == 404
    assert await _status(api, f"user_id:{JANE_USER}") == 404
    assert (await api.client.get("/v1/stats", headers=bearer(READ_KEY))).json()[
        "store"]["profiles"] == 1  # Bob


async def test_suppression_can_keep_late_events_anonymized(api_with) -> None:  # type: ignore[no-untyped-def]
    config = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(suppression="anonymize")})
    async with api_with(config) as api:
        await populate(api)
        await erase(api, f"email:{JANE_EMAIL}")
        await send(api, "wk_crm_123", event("late-3", {
            "email": JANE_EMAIL, "member_number": "M-55", "note": JANE_EMAIL}))
        await api.process()
        assert await _status(api, f"email:{JANE_EMAIL}") == 404
        kept = await api.profile("member_number:M-55")
        assert [i["type"] for i in kept["identities"]] == ["member_number"]
        assert JANE_EMAIL not in orjson.dumps(kept).decode()


async def test_erasure_can_anonymize_instead(api_with) -> None:  # type: ignore[no-untyped-def]
    config = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(erasure="anonymize")})
    async with api_with(config) as api:
        await populate(api)
        report = await erase(api, f"email:{JANE_EMAIL}")
        assert report["mode"] == "anonymize"
        survivor = await api.client.get(f"/v1/profiles/{report['profile_ids'][0]}",
                                        headers=bearer(READ_KEY))
        kept = survivor.json() if survivor.status_code == 200 else (await api.client.get(
            f"/v1/profiles/{report['profile_ids'][1]}", headers=bearer(READ_KEY))).json()
        assert kept["identities"] == [] and kept["traits"] == {}
        assert kept["event_count"] == 3
        assert JANE_EMAIL not in orjson.dumps(kept).decode()


async def test_access_exports_everything_then_nothing_after_erasure(api: Api) -> None:
    await populate(api)
    response = await api.client.post("/v1/privacy/access", headers=ADMIN,
                                     json={"identifier": f"user_id:{JANE_USER}"})
    assert response.status_code == 200, response.text
    export = response.json()
    assert {(i["type"], i["value"]) for i in export["identifiers"]} == {
        ("email", JANE_EMAIL), ("user_id", JANE_USER), ("phone", JANE_PHONE)}
    assert export["traits"]["name"]["value"] == JANE_NAME
    assert export["consent"]["marketing_email"]["value"] is True
    assert export["consent"]["marketing_email"]["source"] == "app"
    assert len(export["timeline"]) == 3 and len(export["merged_profiles"]) == 1
    await erase(api, f"user_id:{JANE_USER}")
    gone = await api.client.post("/v1/privacy/access", headers=ADMIN,
                                 json={"identifier": f"user_id:{JANE_USER}"})
    assert gone.status_code == 404


async def test_requests_are_audited_without_personal_data(api: Api) -> None:
    await populate(api)
    await api.client.post("/v1/privacy/access", headers=ADMIN,
                          json={"identifier": f"email:{JANE_EMAIL}"})
    await erase(api, f"email:{JANE_EMAIL}")
    response = await api.client.get("/v1/audit", headers=ADMIN)
    assert response.status_code == 200
    entries = response.json()
    assert [e["action"] for e in entries[:2]] == ["privacy.erasure", "privacy.access"]
    assert entries[0]["actor"].startswith("config:") and entries[0]["details"]["events"] == 3
    text = response.text
    for value in (JANE_EMAIL, JANE_USER, JANE_PHONE, JANE_NAME):
        assert value not in text
    only = await api.client.get("/v1/audit?action=privacy.access", headers=ADMIN)
    assert [e["action"] for e in only.json()] == ["privacy.access"]


async def test_admin_changes_through_other_endpoints_are_audited(api: Api) -> None:
    response = await api.client.post("/v1/subscriptions", headers=ADMIN, json={
        "name": "audited", "destination": {"type": "webhook", "url": "http://127.0.0.1:9/x"}})
    assert response.status_code in (200, 201), response.text
    entries = (await api.client.get("/v1/audit", headers=ADMIN)).json()
    assert entries[0]["action"] == "http.POST /v1/subscriptions"
    assert entries[0]["outcome"] == str(response.status_code)


async def test_who_may_ask_and_what_a_bad_request_says(api: Api) -> None:
    body = {"identifier": f"email:{JANE_EMAIL}"}
    for path in ("/v1/privacy/erasure", "/v1/privacy/access", "/v1/audit"):
        method = api.client.get if path == "/v1/audit" else api.client.post
        kwargs = {} if path == "/v1/audit" else {"json": body}
        assert (await method(path, **kwargs)).status_code == 401  # type: ignore[operator]
        assert (await method(path, headers=bearer(READ_KEY), **kwargs)).status_code == 403  # type: ignore[operator]
        assert (await method(path, headers=bearer("wk_web_123"), **kwargs)).status_code == 403  # type: ignore[operator]
    cases = [
        ({"identifier": "jane"}, "identifier", "type:value"),
        ({"identifier": "shoe_size:42"}, "identifier", "unknown identifier type"),
        ({"identifier": "email:   "}, "identifier", None),
        ({"identifier": 42}, "identifier", None),
        ({}, "identifier", "required"),
        ({"identifier": "email:a@b.io", "why": 1}, "why", None),
    ]
    for payload, field, reason in cases:
        response = await api.client.post("/v1/privacy/erasure", headers=ADMIN, json=payload)
        assert response.status_code == 400, (payload, response.text)
        error = response.json()["errors"][0]
        assert error["field"] == field, (payload, error)
        if reason:
            assert reason in error["reason"].lower() or reason in error["reason"], error
    dup = await api.client.post("/v1/privacy/erasure", headers={
        **ADMIN, "Content-Type": "application/json"},
        content=b'{"identifier":"email:a@b.io","identifier":"email:c@d.io"}')
    assert dup.status_code == 400 and "duplicate key" in dup.text


async def test_the_privacy_commands_export_and_erase(api: Api) -> None:
    from typer.testing import CliRunner

    from tessera.cli import app as cli

    await populate(api)
    data = str(api.runtime.data_dir)
    runner = CliRunner()
    export = runner.invoke(cli, ["privacy", "access", f"email:{JANE_EMAIL}", "--data-dir", data])
    assert export.exit_code == 0, export.output
    assert orjson.loads(export.output)["traits"]["name"]["value"] == JANE_NAME
    bad = runner.invoke(cli, ["privacy", "erase", "nonsense", "--yes", "--data-dir", data])
    assert bad.exit_code == 1 and "type:value" in bad.output
    erased = await asyncio.to_thread(runner.invoke, cli, [
        "privacy", "erase", f"email:{JANE_EMAIL}", "--yes", "--data-dir", data])
    assert erased.exit_code == 0, erased.output
    assert orjson.loads(erased.output)["events"] == 3
    assert await _status(api, f"email:{JANE_EMAIL}") == 404
    again = runner.invoke(cli, ["privacy", "access", f"email:{JANE_EMAIL}", "--data-dir", data])
    assert again.exit_code == 1 and "no profile" in again.output
