"""Validation at ingest, per source: enforce, quarantine, allow; unknown types; the summary."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tests.catalog.conftest import (
    ADDRESS_CHANGED,
    ADMIN,
    MEMBER_V1,
    READ,
    TICKET_STATUS,
    catalog_section,
    key,
    make_config,
    member_event,
)

CE_BATCH = {"Content-Type": "application/cloudevents-batch+json"}
CE_ONE = {"Content-Type": "application/cloudevents+json"}


def ticket(event_id: str, **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": "roadservice", "type": TICKET_STATUS,
            "data": {"instance_id": "T-1", "status": "open", "member_number": "M-1001", **data}}


async def test_enforce_refuses_the_request_with_the_json_pointer(app_for: Callable) -> None:
    async with app_for(make_config()) as api:
        good = member_event("e1")
        bad = member_event("e2", postcode=1234)
        r = await api.client.post("/v1/events", json=[good, bad],
                                  headers={**key("membership"), **CE_BATCH})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["errors"] == [{"index": 1, "field": "/data/after/postcode",
                                   "reason": "1234 is not of type 'string'"}]
        assert await api.bus_count() == 0  # nothing of the request accepted
        missing = member_event("e3")
        del missing["data"]["after"]["city"]
        r = await api.client.post("/v1/events", json=missing,
                                  headers={**key("membership"), **CE_ONE})
        assert r.status_code == 400
        assert r.json()["errors"] == [{"field": "/data/after",
                                       "reason": "'city' is a required property"}]
        r = await api.client.post("/v1/events", json=[good],
                                  headers={**key("membership"), **CE_BATCH})
        assert r.status_code == 202 and r.json()["accepted"] == 1
        await api.process()
        profile = await api.profile("member_number:M-1001")
        assert profile["traits"]["city"]["value"] == "Bergen"  # the catalog's trait mapping
        summary = (await api.client.get("/v1/catalog/violations", headers=READ)).json()
        rows = {(v["type"], v["reason"], v["outcome"]): v["count"]
                for v in summary["violations"]}
        assert rows == {
            (ADDRESS_CHANGED, "/data/after/postcode: must be of type string", "rejected"): 1,
            (ADDRESS_CHANGED, "/data/after: 'city' is a required property", "rejected"): 1,
        }


async def test_quarantine_holds_events_until_released_after_a_fix(app_for: Callable) -> None:
    config = make_config()
    async with app_for(config) as api:
        events = [ticket("t1"), ticket("t2", priority=1), ticket("t3")]
        r = await api.client.post("/v1/events", json=events,
                                  headers={**key("roadservice"), **CE_BATCH})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == 2 and body["quarantined"] == 1
        assert body["quarantined_ids"] == ["t2"] and body["ids"] == ["t1", "t2", "t3"]
        assert await api.bus_count() == 2  # the quarantined one is not on "events"
        assert await api.runtime.bus.count("quarantine") == 1  # type: ignore[attr-defined]
        listed = (await api.client.get("/v1/catalog/quarantine", headers=ADMIN)).json()
        assert [(e["id"], e["problems"][0]["pointer"]) for e in listed["events"]] == [
            ("t2", "/data")]
        assert listed["events"][0]["event"]["data"]["priority"] == 1
        r = await api.client.get("/v1/catalog/quarantine", headers=READ)
        assert r.status_code == 403  # whole events: admin only
        # releasing without a fix keeps it quarantined, with the reason
        r = await api.client.post("/v1/catalog/quarantine/release", json={"all": True},
                                  headers=ADMIN)
        assert r.json()["released"] == 0 and list(r.json()["still_invalid"]) != []
        await api.process()
    # the fix: a second schema version with the new optional field
    section = catalog_section()
    v2 = copy.deepcopy(section["events"][1]["versions"][0]["schema"])
    v2["properties"]["priority"] = {"type": "integer"}
    section["events"][1]["versions"].append({"version": 2, "schema": v2})
    fixed = make_config(section)
    async with app_for(fixed) as api:
        r = await api.client.post("/v1/catalog/quarantine/release", json={"ids": ["t2"]},
                                  headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["released"] == 1 and r.json()["still_invalid"] == {}
        assert await api.bus_count() == 3
        listed = (await api.client.get("/v1/catalog/quarantine", headers=ADMIN)).json()
        assert listed["events"] == []
        await api.process()
        timeline = await api.client.get("/v1/profiles/member_number:M-1001/events",
                                        headers=READ)
        assert sorted(e["id"] for e in timeline.json()["events"]) == ["t1", "t2", "t3"]


async def test_allow_processes_the_event_and_records_the_violation(app_for: Callable) -> None:
    async with app_for(make_config()) as api:
        bad = member_event("a1", postcode="far too long a postcode")
        r = await api.client.post("/v1/events", json=[bad], headers={**key("crm"), **CE_BATCH})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1 and r.json()["violations"] == 1
        await api.process()
        profile = await api.profile("member_number:M-1001")
        assert profile["traits"]["postcode"]["value"] == "far too long a postcode"
        rows = (await api.client.get("/v1/catalog/violations", headers=READ)).json()
        assert [(v["reason"], v["outcome"], v["source"], v["count"])
                for v in rows["violations"]] == [
            ("/data/after/postcode: fails maxLength 10", "allowed", "crm", 1)]
        # the summary names no value (no personal data in it)
        assert "far too long" not in str(rows)


async def test_unknown_types_per_source(app_for: Callable) -> None:
    config = make_config(web=(None, "reject"), crm=("allow", "quarantine"))
    async with app_for(config) as api:
        other = {"specversion": "1.0", "id": "u1", "source": "x", "type": "com.example.unknown",
                 "data": {"userId": "u-1"}}
        r = await api.client.post("/v1/events", json=other, headers={**key("membership"),
                                                                      **CE_ONE})
        assert r.status_code == 202  # membership: unknown types allowed (the default)
        r = await api.client.post("/v1/events", json=other, headers={**key("web"), **CE_ONE})
        assert r.status_code == 400
        assert r.json()["errors"] == [{"field": "/type", "reason":
                                       "'com.example.unknown' is not in the event catalog"}]
        r = await api.client.post("/v1/events", json=other, headers={**key("crm"), **CE_ONE})
        assert r.status_code == 202 and r.json()["quarantined"] == 1
        assert await api.bus_count() == 1


async def test_segment_track_events_are_validated(app_for: Callable) -> None:
    async with app_for(make_config()) as api:
        batch = {"batch": [
            {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
             "properties": {"total": 10}},
            {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m2",
             "properties": {"total": "ten"}},
            {"type": "identify", "userId": "u1", "messageId": "m3", "traits": {"a": 1}},
        ]}
        r = await api.client.post("/v1/batch", json=batch, headers=key("web"))
        assert r.status_code == 400
        assert r.json()["errors"] == [{"index": 1, "field": "/data/properties/total",
                                       "reason": "'ten' is not of type 'number'"}]
        del batch["batch"][1]
        r = await api.client.post("/v1/batch", json=batch, headers=key("web"))
        assert r.status_code == 200 and r.json()["accepted"] == 2


async def test_dataschema_selects_the_version(app_for: Callable) -> None:
    section = catalog_section()
    v2 = copy.deepcopy(MEMBER_V1)
    v2["properties"]["after"]["properties"]["country"] = {"type": "string"}
    section["events"][0]["versions"].append({"version": 2, "schema": v2})
    async with app_for(make_config(section)) as api:
        event = member_event("d1", country=5)  # v1 allows any country, v2 wants a string
        event["dataschema"] = f"urn:tessera:schema:{ADDRESS_CHANGED}:v1"
        r = await api.client.post("/v1/events", json=event, headers={**key("membership"),
                                                                      **CE_ONE})
        assert r.status_code == 202, r.text
        event["id"], event["dataschema"] = "d2", f"urn:tessera:schema:{ADDRESS_CHANGED}:v2"
        r = await api.client.post("/v1/events", json=event, headers={**key("membership"),
                                                                      **CE_ONE})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "/data/after/country"
        event["id"], event["dataschema"] = "d3", "urn:other:v9"
        r = await api.client.post("/v1/events", json=event, headers={**key("membership"),
                                                                      **CE_ONE})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "/dataschema"
        r = await api.client.get(f"/v1/catalog/types/{ADDRESS_CHANGED}/versions/2", headers=READ)
        assert r.json()["properties"]["after"]["properties"]["country"] == {"type": "string"}


async def test_without_a_catalog_everything_is_accepted_as_before(app_for: Callable) -> None:
    from tessera.config import default_config

    async with app_for(default_config()) as api:
        bad = member_event("n1", postcode=1234)
        r = await api.client.post("/v1/events", json=[bad],
                                  headers={"Authorization": "Bearer wk_membership_123", **CE_BATCH})
        assert r.status_code == 202 and set(r.json()) == {"accepted", "duplicates", "ids"}
        r = await api.client.get("/v1/catalog", headers=READ)
        assert r.json() == {"event_types": [], "sources": {}}
