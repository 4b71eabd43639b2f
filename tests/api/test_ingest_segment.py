"""The Segment Tracking API spec: /v1/batch and the single calls."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest

from tests.api.helpers import READ_KEY, WRITE_KEY, Api, basic, bearer

AUTH = basic(WRITE_KEY)


def message(kind: str, message_id: str, **fields: Any) -> dict[str, Any]:
    """A valid Segment message of type ``kind``."""
    base: dict[str, Any] = {"type": kind, "messageId": message_id, "userId": "u-seg"}
    extra: dict[str, dict[str, Any]] = {
        "track": {"event": "Order Completed", "properties": {"total": 10}},
        "identify": {"traits": {"email": "Seg@Example.com", "plan": "pro"}},
        "page": {"name": "Home", "properties": {"url": "https://example.com/"}},
        "screen": {"name": "Settings"},
        "group": {"groupId": "acme", "traits": {"employees": 10}},
        "alias": {"previousId": "anon-old"},
    }
    return {**base, **extra[kind], **fields}


async def events_of(api: Api, identifier: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/v1/profiles/{identifier}/events", headers=bearer(READ_KEY))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


@pytest.mark.parametrize("kind", ["track", "identify", "page", "screen", "group", "alias"])
async def test_single_call_endpoints(api: Api, kind: str) -> None:
    body = message(kind, f"m-{kind}")
    del body["type"]  # the path says what it is
    response = await api.client.post(f"/v1/{kind}", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 1, "duplicates": 0}
    await api.process()
    [event] = await events_of(api, "user_id:u-seg")
    assert event["source"] == "segment/web"
    assert event["id"] == f"m-{kind}"
    expected_type = "Order Completed" if kind == "track" else f"segment.{kind}"
    assert event["type"] == expected_type
    assert event["data"]["type"] == kind


async def test_single_call_refuses_a_message_of_another_type(api: Api) -> None:
    response = await api.client.post("/v1/track", headers=AUTH, json=message("identify", "m-x"))
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "type", "reason": "must be 'track' on /v1/track"}
    ]
    assert await api.bus_count() == 0


async def test_batch_of_every_call_builds_one_profile(api: Api) -> None:
    batch = [message(k, f"b-{k}") for k in ("identify", "track", "page", "screen", "group")]
    batch.append(message("alias", "b-alias"))
    response = await api.client.post("/v1/batch", headers=AUTH, json={"batch": batch})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 6
    await api.process()
    profile = await api.profile("email:seg@example.com")
    assert profile["traits"]["plan"]["value"] == "pro"
    assert "employees" not in profile["traits"]  # group traits describe the group
    identities = {(i["type"], i["value"]) for i in profile["identities"]}
    assert identities == {
        ("user_id", "u-seg"),
        ("email", "seg@example.com"),
        ("anonymous_id", "anon-old"),
    }
    assert profile["event_count"] == 6


async def test_batch_context_applies_to_messages_without_their_own(api: Api) -> None:
    body = {
        "batch": [message("track", "ctx-1"), message("track", "ctx-2", context={"ip": "2"})],
        "context": {"ip": "1"},
    }
    response = await api.client.post("/v1/batch", headers=AUTH, json=body)
    assert response.status_code == 200
    await api.process()
    events = {e["id"]: e for e in await events_of(api, "user_id:u-seg")}
    assert events["ctx-1"]["data"]["context"] == {"ip": "1"}
    assert events["ctx-2"]["data"]["context"] == {"ip": "2"}


async def test_write_key_in_the_body(api: Api) -> None:
    body = {"batch": [message("track", "wk-1")], "writeKey": WRITE_KEY}
    response = await api.client.post("/v1/batch", json=body)
    assert response.status_code == 200, response.text
    single = {**message("identify", "wk-2"), "writeKey": WRITE_KEY}
    response = await api.client.post("/v1/identify", json=single)
    assert response.status_code == 200, response.text
    await api.process()
    events = await events_of(api, "user_id:u-seg")
    assert {e["id"] for e in events} == {"wk-1", "wk-2"}
    assert all("writeKey" not in e["data"] for e in events)


async def test_write_key_as_bearer(api: Api) -> None:
    response = await api.client.post(
        "/v1/track", headers=bearer(WRITE_KEY), json=message("track", "br-1")
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "body_key"),
    [({}, None), (basic("wk_nope_999"), None), ({}, "wk_nope_999"), (basic(""), None)],
    ids=["missing", "unknown-basic", "unknown-in-body", "empty-basic-user"],
)
async def test_missing_or_unknown_write_key_is_401(
    api: Api, headers: dict[str, str], body_key: str | None
) -> None:
    body: dict[str, Any] = {"batch": [message("track", "k-1")]}
    if body_key:
        body["writeKey"] = body_key
    response = await api.client.post("/v1/batch", headers=headers, json=body)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert await api.bus_count() == 0


async def test_unknown_key_in_header_is_refused_before_the_body_is_read(api: Api) -> None:
    response = await api.client.post(
        "/v1/batch", headers=basic("wk_nope_999"), content=b"{not json"
    )
    assert response.status_code == 401


async def test_gzip_body_is_accepted(api: Api) -> None:
    body = orjson.dumps({"batch": [message("track", f"gz-{i}") for i in range(20)]})
    response = await api.client.post(
        "/v1/batch",
        headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"},
        content=gzip.compress(body),
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 20
    assert await api.bus_count() == 20


async def test_deflate_body_is_accepted(api: Api) -> None:
    body = orjson.dumps(message("track", "df-1"))
    response = await api.client.post(
        "/v1/track",
        headers={**AUTH, "Content-Encoding": "deflate"},
        content=zlib.compress(body),
    )
    assert response.status_code == 200, response.text


async def test_corrupt_gzip_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/batch",
        headers={**AUTH, "Content-Encoding": "gzip"},
        content=b"\x1f\x8b\x08\x00garbage that is not deflate",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert "corrupt gzip" in response.json()["message"]


async def test_truncated_gzip_is_400(api: Api) -> None:
    whole = gzip.compress(orjson.dumps({"batch": [message("track", "t-1")]}))
    response = await api.client.post(
        "/v1/batch", headers={**AUTH, "Content-Encoding": "gzip"}, content=whole[:-12]
    )
    assert response.status_code == 400
    assert await api.bus_count() == 0


async def test_gzip_bomb_past_the_request_limit_is_413(api: Api) -> None:
    # 600 KB of zeros inside a valid JSON document compresses to under 1 KB
    bomb = gzip.compress(b'{"batch": [], "pad": "' + b"0" * 600_000 + b'"}')
    assert len(bomb) < 2_000
    response = await api.client.post(
        "/v1/batch", headers={**AUTH, "Content-Encoding": "gzip"}, content=bomb
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_gzip_just_under_the_request_limit_is_accepted(api: Api) -> None:
    messages = []
    size = 0
    i = 0
    while size < 480_000:
        m = message("track", f"big-{i}", properties={"pad": "x" * 30_000})
        messages.append(m)
        size += len(orjson.dumps(m))
        i += 1
    body = orjson.dumps({"batch": messages})
    assert len(body) <= 500 * 1024
    response = await api.client.post(
        "/v1/batch", headers={**AUTH, "Content-Encoding": "gzip"}, content=gzip.compress(body)
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(messages)


async def test_request_over_500_kb_is_413(api: Api) -> None:
    messages = [message("track", f"r-{i}", properties={"pad": "x" * 30_000}) for i in range(18)]
    body = orjson.dumps({"batch": messages})
    assert len(body) > 500 * 1024
    response = await api.client.post("/v1/batch", headers=AUTH, content=body)
    assert response.status_code == 413
    assert await api.bus_count() == 0


async def test_single_message_over_32_kb_is_413(api: Api) -> None:
    body = message("track", "huge", properties={"pad": "x" * 33_000})
    response = await api.client.post("/v1/track", headers=AUTH, json=body)
    assert response.status_code == 413
    [error] = response.json()["errors"]
    assert error["field"] == "(message)"
    assert "32768" in error["reason"]


async def test_batch_with_a_message_over_32_kb_is_413_naming_it(api: Api) -> None:
    batch = [
        message("track", "ok-1"),
        message("track", "huge", properties={"pad": "x" * 33_000}),
        message("track", "ok-2"),
    ]
    response = await api.client.post("/v1/batch", headers=AUTH, json={"batch": batch})
    assert response.status_code == 413
    [error] = response.json()["errors"]
    assert error["index"] == 1
    assert await api.bus_count() == 0


async def test_message_id_dedupes(api: Api) -> None:
    body = message("track", "retry-1")
    first = await api.client.post("/v1/track", headers=AUTH, json=body)
    second = await api.client.post("/v1/track", headers=AUTH, json=body)
    assert first.json()["accepted"] == 1
    assert second.status_code == 200
    assert second.json() == {"success": True, "accepted": 0, "duplicates": 1}
    # the same message again inside a batch
    third = await api.client.post("/v1/batch", headers=AUTH, json={"batch": [body, body]})
    assert third.json() == {"success": True, "accepted": 0, "duplicates": 2}
    assert await api.bus_count() == 1
    await api.process()
    events = await events_of(api, "user_id:u-seg")
    assert [e["id"] for e in events] == ["retry-1"]
    profile = await api.profile("user_id:u-seg")
    assert profile["event_count"] == 1


async def test_same_message_id_from_two_sources_is_two_events(api: Api) -> None:
    body = message("track", "shared-id")
    await api.client.post("/v1/track", headers=basic("wk_web_123"), json=body)
    await api.client.post("/v1/track", headers=basic("wk_app_123"), json=body)
    assert await api.bus_count() == 2


async def test_messages_without_message_id_are_each_kept(api: Api) -> None:
    body = message("track", "x")
    del body["messageId"]
    for _ in range(2):
        response = await api.client.post("/v1/track", headers=AUTH, json=body)
        assert response.json()["accepted"] == 1
    assert await api.bus_count() == 2


async def test_numeric_user_id_is_a_string_identifier(api: Api) -> None:
    response = await api.client.post(
        "/v1/identify", headers=AUTH, json={"userId": 42, "traits": {"a": 1}, "messageId": "n1"}
    )
    assert response.status_code == 200
    await api.process()
    profile = await api.profile("user_id:42")
    assert profile["traits"]["a"]["value"] == 1


async def test_boolean_user_id_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/v1/track", headers=AUTH, json={"userId": True, "event": "E", "messageId": "b1"}
    )
    assert response.status_code == 400
    assert {"field": "userId", "reason": "must be a string"} in response.json()["errors"]


async def test_text_plain_content_type_is_accepted(api: Api) -> None:
    # browsers' sendBeacon posts JSON as text/plain
    response = await api.client.post(
        "/v1/track",
        headers={**AUTH, "Content-Type": "text/plain;charset=UTF-8"},
        content=orjson.dumps(message("track", "tp-1")),
    )
    assert response.status_code == 200


async def test_data_after_the_gzip_stream_is_not_dropped_silently(api: Api) -> None:
    first = gzip.compress(orjson.dumps({"batch": [message("track", "first")]}))
    second = gzip.compress(orjson.dumps({"batch": [message("track", "second")]}))
    response = await api.client.post(
        "/v1/batch", headers={**AUTH, "Content-Encoding": "gzip"}, content=first + second
    )
    assert response.status_code == 400
    assert "after the end of the gzip stream" in response.json()["message"]
    assert await api.bus_count() == 0
