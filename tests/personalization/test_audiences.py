"""Audiences saved through the API: validation, origin, filling in existing profiles,
pick-up by a running processor without a restart, replacement and deletion (demo
configuration, events in through the HTTP API)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from tessera.events.envelope import Event
from tests.personalization.test_api import KEY, Client, member

ADMIN = {"Authorization": "Bearer ak_admin_123"}
TOWED_ONCE = {"name": "towed_once", "description": "At least one tow in twelve months",
              "rule": {"all": [{"audience": "members"},
                               {"path": "computed.roadside_tows_12m", "gte": 1}]}}
_groups = itertools.count()


async def derived(c: Client, type_: str) -> list[Event]:
    """``type_`` events on the derived topic so far, read with a fresh consumer group."""
    group = f"test-audiences-{next(_groups)}"
    out: list[Event] = []
    while batch := await c.runtime.bus.fetch("derived", group, 500, 0.01):
        out += [Event.from_json(d.payload) for d in batch]
        await c.runtime.bus.ack(batch)
    return [e for e in out if e.type == type_]


def about(events: list[Event], segment: str) -> list[tuple[str, str]]:
    return sorted((e.data["profile_id"], e.data["reason"]) for e in events  # type: ignore[index]
                  if e.data["segment"] == segment)  # type: ignore[index]


async def save(c: Client, body: dict[str, Any], status: int = 201) -> Any:
    response = await c.http.post("/v1/audiences", headers=ADMIN, json=body)
    assert response.status_code == status, response.text
    return response.json()


async def members_of(c: Client, name: str) -> set[str]:
    page = await c.get(f"/v1/segments/{name}/members")
    return {m["profile_id"] for m in page["members"]}


async def test_a_saved_audience_fills_in_existing_profiles_and_then_follows_events(
        api: Client) -> None:
    await member(api, "M-1", consent=True, tows=1)
    await member(api, "M-2", consent=True, tows=0)
    await api.process()
    one = api.runtime.store.resolve("member_number:M-1")
    two = api.runtime.store.resolve("member_number:M-2")

    body = await save(api, TOWED_ONCE)
    assert body["origin"] == "api" and body["evaluated"] is False and body["size"] == 0
    assert body["rule"] == TOWED_ONCE["rule"] and body["description"] == TOWED_ONCE["description"]
    await api.process()  # the processor picks it up and fills it in

    assert await members_of(api, "towed_once") == {one}
    assert about(await derived(api, "segment.entered"), "towed_once") == [(one, "saved")]
    found = await api.get("/v1/audiences/towed_once")
    assert found["evaluated"] is True and found["size"] == 1
    segments = await api.get("/v1/profiles/member_number:M-1/segments")
    assert "towed_once" in [s["segment"] for s in segments["segments"]]

    # from now on like a configured audience: an event makes M-2 enter
    await api.send("roadservice", "ticket.status_changed",
                   {"member_number": "M-2", "status": "completed", "resolution": "towed"})
    await api.process()
    assert await members_of(api, "towed_once") == {one, two}
    assert (two, "event") in about(await derived(api, "segment.entered"), "towed_once")


async def test_the_list_says_where_each_audience_comes_from(api: Client) -> None:
    await save(api, TOWED_ONCE)
    listed = (await api.get("/v1/audiences"))["audiences"]
    origins = {a["name"]: a["origin"] for a in listed}
    assert origins["towed_once"] == "api"
    assert origins["frequent_tows"] == "config" and origins["members"] == "config"
    assert [a["name"] for a in listed][-1] == "towed_once"  # configured ones first
    saved = next(a for a in listed if a["name"] == "towed_once")
    assert saved["created_at"] and saved["updated_at"]
    # the segments list shows the saved one too, with the same origin
    segments = {s["name"]: s["origin"] for s in (await api.get("/v1/segments"))["segments"]}
    assert segments["towed_once"] == "api"
    assert (await api.http.get("/v1/audiences/nope", headers=KEY)).status_code == 404


async def test_replacing_a_saved_audience_reevaluates_its_members(api: Client) -> None:
    await member(api, "M-1", consent=True, tows=1)
    await member(api, "M-2", consent=True, tows=3)
    await api.process()
    one = api.runtime.store.resolve("member_number:M-1")
    two = api.runtime.store.resolve("member_number:M-2")
    first = await save(api, TOWED_ONCE)
    await api.process()
    assert await members_of(api, "towed_once") == {one, two}

    stricter = {**TOWED_ONCE, "rule": {"path": "computed.roadside_tows_12m", "gte": 3}}
    replaced = await save(api, stricter, status=200)
    assert replaced["created_at"] == first["created_at"]
    assert replaced["rule"] == stricter["rule"] and replaced["evaluated"] is False
    await api.process()
    assert await members_of(api, "towed_once") == {two}
    assert about(await derived(api, "segment.exited"), "towed_once") == [(one, "saved")]


async def test_deleting_a_saved_audience_makes_its_members_exit(api: Client) -> None:
    await member(api, "M-1", consent=True, tows=1)
    await api.process()
    one = api.runtime.store.resolve("member_number:M-1")
    await save(api, TOWED_ONCE)
    await api.process()
    assert await members_of(api, "towed_once") == {one}

    response = await api.http.delete("/v1/audiences/towed_once", headers=ADMIN)
    assert response.status_code == 204, response.text
    await api.process()
    exits = [e for e in await derived(api, "segment.exited")
             if e.data["segment"] == "towed_once"]  # type: ignore[index]
    assert [(e.data["profile_id"], e.data["reason"]) for e in exits] == [  # type: ignore[index]
        (one, "deleted")]
    assert exits[0].data["member_since"]  # type: ignore[index]
    assert "towed_once" not in api.service.state.memberships_of(one)
    assert (await api.http.get("/v1/audiences/towed_once", headers=KEY)).status_code == 404
    assert "towed_once" not in [a["name"] for a in (await api.get("/v1/audiences"))["audiences"]]
    # a later event does not bring the member back
    await api.send("roadservice", "ticket.status_changed",
                   {"member_number": "M-1", "status": "completed", "resolution": "towed"})
    await api.process()
    assert "towed_once" not in api.service.state.memberships_of(one)


async def test_the_running_processor_picks_up_a_saved_audience_without_a_restart(
        api: Client) -> None:
    await member(api, "M-1", consent=True, tows=1)
    await api.runtime.worker().run_until_idle()
    service = type(api.service).from_runtime(api.runtime, refresh=0.2, tick=0.1)
    task = asyncio.create_task(service.run())
    try:
        one = api.runtime.store.resolve("member_number:M-1")

        async def wait_for(check: Any, what: str, timeout: float = 15.0) -> float:
            started = time.monotonic()
            while not await check():
                assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
                await asyncio.sleep(0.05)
            return time.monotonic() - started

        async def in_it() -> bool:
            return "towed_once" in service.state.memberships_of(one)

        async def applied() -> bool:
            return service.stats.events > 0

        await wait_for(applied, "the events")
        await save(api, TOWED_ONCE)
        await wait_for(in_it, "the saved audience to be filled in")
        assert (await api.get("/v1/audiences/towed_once"))["evaluated"] is True
        assert await api.http.delete("/v1/audiences/towed_once", headers=ADMIN)

        async def out_of_it() -> bool:
            return not await in_it()

        await wait_for(out_of_it, "the deleted audience's member to exit")
    finally:
        service.stop()
        await task


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"rule": {"consent": "x"}}, "name", "required"),
    ({"name": "Bad Name", "rule": {"consent": "x"}}, "name", "pattern"),
    ({"name": "x", "rule": {"path": "traits.tier"}}, "rule", "operator"),
    ({"name": "x", "rule": {"all": [{"consent": "x"}, {"audience": "nope"}]}},
     "rule.all.1.audience", "no audience named 'nope'"),
    ({"name": "x", "rule": {"path": "computed.nope", "gte": 1}}, "rule.path",
     "no computed trait named 'nope'"),
    ({"name": "x", "rule": {"not": {"path": "trait.tier", "eq": "plus"}}}, "rule.not.path",
     "starts with 'trait'"),
    ({"name": "x", "rule": {"any": [{"event": {"type": "com.example.crm.never", "min": 1}}]}},
     "rule.any.0.event", "no configured rule counts this event history"),
    ({"name": "x", "rule": {"audience": "x"}}, "rule", "cycle"),
    ({"name": "x", "rule": {"consent": "x"}, "colour": "red"}, "colour", "unknown field"),
])
async def test_an_invalid_audience_is_refused_naming_the_field(
        api: Client, body: dict[str, Any], field: str, words: str) -> None:
    response = await api.http.post("/v1/audiences", headers=ADMIN, json=body)
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and words in e["reason"] for e in errors), errors
    assert (await api.get("/v1/audiences"))["audiences"][-1]["origin"] == "config"


async def test_an_event_history_a_configured_rule_counts_is_accepted(api: Client) -> None:
    # frequent_roadside_callers' condition, with another threshold: already counted
    rule = {"event": {"type": "com.example.roadservice.ticket.created", "within": "30d",
                      "min": 5}}
    await save(api, {"name": "very_frequent_callers", "rule": rule})


async def test_configured_audiences_cannot_be_replaced_or_deleted_here(api: Client) -> None:
    clash = await api.http.post("/v1/audiences", headers=ADMIN,
                                json={"name": "members", "rule": {"consent": "x"}})
    assert clash.status_code == 409 and "configuration file" in clash.json()["message"]
    gone = await api.http.delete("/v1/audiences/members", headers=ADMIN)
    assert gone.status_code == 409
    assert "configuration file" in gone.json()["message"]
    assert (await api.http.delete("/v1/audiences/nope", headers=ADMIN)).status_code == 404


async def test_an_audience_another_one_uses_cannot_be_deleted(api: Client) -> None:
    await save(api, TOWED_ONCE)
    await save(api, {"name": "towed_with_consent", "rule": {
        "all": [{"audience": "towed_once"}, {"consent": "marketing_email"}]}})
    used = await api.http.delete("/v1/audiences/towed_once", headers=ADMIN)
    assert used.status_code == 409 and "towed_with_consent" in used.json()["message"]
    assert (await api.http.delete("/v1/audiences/towed_with_consent",
                                  headers=ADMIN)).status_code == 204
    assert (await api.http.delete("/v1/audiences/towed_once", headers=ADMIN)).status_code == 204


async def test_saving_and_deleting_need_the_admin_scope(api: Client) -> None:
    assert (await api.http.post("/v1/audiences", headers=KEY,
                                json=TOWED_ONCE)).status_code == 403
    assert (await api.http.post("/v1/audiences", json=TOWED_ONCE)).status_code == 401
    await save(api, TOWED_ONCE)
    assert (await api.http.delete("/v1/audiences/towed_once", headers=KEY)).status_code == 403
    reader = {"Authorization": "Bearer rk_read_123"}
    assert (await api.http.get("/v1/audiences", headers=reader)).status_code == 403
    assert (await api.http.get("/v1/audiences", headers=KEY)).status_code == 200
