"""Every ingest error: the status, and a JSON body that names what was wrong."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.api.helpers import READ_KEY, WRITE_KEY, Api, basic, bearer, ce

STRUCTURED = {"Content-Type": "application/cloudevents+json", **bearer(WRITE_KEY)}
BATCH = {"Content-Type": "application/cloudevents-batch+json", **bearer(WRITE_KEY)}


def errors_of(body: dict[str, Any]) -> set[tuple[int | None, str]]:
    return {(e.get("index"), e["field"]) for e in body["errors"]}


async def test_cloudevents_batch_with_two_bad_events_among_five_accepts_nothing(
    api: Api,
) -> None:
    events = [ce(f"ok-{i}") for i in range(5)]
    del events[1]["source"]
    events[3]["time"] = "not a time"
    response = await api.client.post("/v1/events", headers=BATCH, content=orjson.dumps(events))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_events"
    assert body["code"] == "invalid_events"  # what the Segment and RudderStack SDKs read
    assert "2 event(s) invalid" in body["message"]
    assert body["errors"] == [
        {"field": "source", "reason": "is required", "index": 1},
        {"field": "time", "reason": "'not a time' is not an RFC 3339 timestamp", "index": 3},
    ]
    assert await api.bus_count() == 0


async def test_segment_batch_with_two_bad_messages_among_five_accepts_nothing(api: Api) -> None:
    batch: list[Any] = [
        {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m{i}"} for i in range(5)
    ]
    del batch[0]["event"]
    batch[4] = {"type": "identify", "messageId": "m4", "timestamp": "soon"}
    response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), json={"batch": batch})
    assert response.status_code == 400
    body = response.json()
    assert "2 message(s) invalid" in body["message"]
    assert errors_of(body) == {(0, "event"), (4, "userId"), (4, "timestamp")}
    reasons = {(e["index"], e["field"]): e["reason"] for e in body["errors"]}
    assert reasons[(4, "userId")] == "userId or anonymousId is required"
    assert reasons[(0, "event")] == "is required for track and must be a string"
    assert await api.bus_count() == 0


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
async def test_missing_required_cloudevents_attribute(api: Api, missing: str) -> None:
    event = ce("m1")
    del event[missing]
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(event))
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": missing, "reason": "is required"}]
    assert await api.bus_count() == 0


@pytest.mark.parametrize(
    ("attrs", "field", "reason"),
    [
        ({"specversion": "0.3"}, "specversion", "must be \"1.0\", got '0.3'"),
        ({"id": ""}, "id", "must be a non-empty string"),
        ({"source": 7}, "source", "must be a non-empty string"),
        ({"type": "t" * 300}, "type", "must be at most 256 characters"),
        ({"id": "a\x00b"}, "id", "must not contain NUL characters"),
        ({"time": "yesterday"}, "time", "'yesterday' is not an RFC 3339 timestamp"),
        ({"time": 1700000000}, "time", "must be an RFC 3339 timestamp string"),
        ({"subject": 5}, "subject", "must be a string"),
        ({"data_base64": "***"}, "data_base64", "must be a base64 string"),
        ({"Bad-Name": 1}, "Bad-Name", "is not a CloudEvents attribute name"),
    ],
)
async def test_invalid_cloudevents_attribute_is_named(
    api: Api, attrs: dict[str, Any], field: str, reason: str
) -> None:
    event = ce("bad", **attrs)
    if "data_base64" in attrs:
        del event["data"]
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(event))
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert error["reason"].startswith(reason)
    assert await api.bus_count() == 0


async def test_data_and_data_base64_together_is_400(api: Api) -> None:
    event = ce("both", data_base64="aGk=")
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(event))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "data_base64"


async def test_structured_event_must_be_an_object(api: Api) -> None:
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=b"[1, 2]")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "(event)", "reason": "must be a JSON object"}]


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1/events", STRUCTURED), ("/v1/events", BATCH), ("/v1/batch", basic(WRITE_KEY))],
)
async def test_invalid_json_is_400(api: Api, path: str, headers: dict[str, str]) -> None:
    for content, error in [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"a": 1} trailing', "invalid_json"),
        (b"", "invalid_body"),
    ]:
        response = await api.client.post(path, headers=headers, content=content)
        assert response.status_code == 400, content
        body = response.json()
        assert body["error"] == error
        assert body["errors"][0]["field"] == "(body)"
    assert await api.bus_count() == 0


async def test_segment_body_must_be_an_object(api: Api) -> None:
    response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), content=b"[]")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "(body)", "reason": "must be a JSON object"}]


async def test_segment_batch_field_is_required(api: Api) -> None:
    response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), json={"x": 1})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "batch"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wk_unknown_1"),
        basic("wk_unknown_1"),
        {"Authorization": "Token wk_web_123"},
        {"Authorization": "Basic %%%not-base64"},
    ],
    ids=["missing", "unknown-bearer", "unknown-basic", "other-scheme", "bad-basic"],
)
async def test_cloudevents_without_a_valid_write_key_is_401(
    api: Api, headers: dict[str, str]
) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={"Content-Type": "application/cloudevents+json", **headers},
        content=orjson.dumps(ce()),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert await api.bus_count() == 0


async def test_a_read_key_cannot_ingest_it_is_403(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={"Content-Type": "application/cloudevents+json", **bearer(READ_KEY)},
        content=orjson.dumps(ce()),
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert await api.bus_count() == 0


async def test_structured_event_over_256_kb_is_413(api: Api) -> None:
    event = ce("big", data={"pad": "x" * (256 * 1024)})
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(event))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_binary_event_over_256_kb_is_413(api: Api) -> None:
    headers = {
        **bearer(WRITE_KEY),
        "ce-specversion": "1.0",
        "ce-id": "big",
        "ce-source": "s",
        "ce-type": "t",
        "Content-Type": "application/octet-stream",
    }
    response = await api.client.post("/v1/events", headers=headers, content=b"x" * 300_000)
    assert response.status_code == 413


async def test_cloudevents_request_over_5_mb_is_413(api: Api) -> None:
    response = await api.client.post(
        "/v1/events", headers=BATCH, content=b"[" + b" " * (5 * 1024 * 1024) + b"]"
    )
    assert response.status_code == 413


async def test_cloudevents_batch_over_5000_events_is_413(api: Api) -> None:
    events = [{"id": str(i)} for i in range(5001)]
    response = await api.client.post("/v1/events", headers=BATCH, content=orjson.dumps(events))
    assert response.status_code == 413
    assert "5000" in response.json()["message"]


@pytest.mark.parametrize("content_type", ["text/csv", "application/json", None])
async def test_unsupported_media_type_at_v1_events_is_415(
    api: Api, content_type: str | None
) -> None:
    headers = bearer(WRITE_KEY)
    if content_type:
        headers["Content-Type"] = content_type
    response = await api.client.post("/v1/events", headers=headers, content=b"a,b\n1,2\n")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert await api.bus_count() == 0


async def test_unsupported_media_type_at_segment_is_415(api: Api) -> None:
    response = await api.client.post(
        "/v1/track",
        headers={**basic(WRITE_KEY), "Content-Type": "application/xml"},
        content=b"<track/>",
    )
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/events", STRUCTURED),
        ("/v1/batch", {**basic(WRITE_KEY), "Content-Type": "application/json"}),
    ],
)
async def test_unknown_content_encoding_is_415(
    api: Api, path: str, headers: dict[str, str]
) -> None:
    response = await api.client.post(
        path, headers={**headers, "Content-Encoding": "br"}, content=b"\x00\x01"
    )
    assert response.status_code == 415
    assert "Content-Encoding" in response.json()["message"]


async def test_wrong_method_and_unknown_path(api: Api) -> None:
    response = await api.client.get("/v1/events")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    response = await api.client.post("/v1/nothing-here", json={})
    assert response.status_code == 404
    assert response.json()["error"] == response.json()["code"] == "not_found"
