"""CloudEvents 1.0 over HTTP at POST /v1/events: structured, binary and batched modes."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import orjson
import pytest

from tests.api.helpers import OTHER_WRITE_KEY, WRITE_KEY, Api, basic, bearer, ce

STRUCTURED = {"Content-Type": "application/cloudevents+json", **bearer(WRITE_KEY)}
BATCH = {"Content-Type": "application/cloudevents-batch+json", **bearer(WRITE_KEY)}


def binary_headers(event_id: str = "b1", **extra: str) -> dict[str, str]:
    return {
        **bearer(WRITE_KEY),
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "https://pos.example.com",
        "ce-type": "com.example.store.purchase",
        "ce-time": "2026-03-04T05:06:07Z",
        **extra,
    }


async def timeline(api: Api, identifier: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/v1/profiles/{identifier}/events", headers=bearer("rk_read_123")
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_structured_event_is_accepted_and_lands_on_the_profile(api: Api) -> None:
    event = ce("s1", data={"userId": "u-1", "traits": {"city": "Lyon"}}, subject="order-9")
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(event))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "ids": ["s1"]}
    assert await api.bus_count() == 1

    await api.process()
    profile = await api.profile("user_id:u-1")
    assert profile["traits"]["city"]["value"] == "Lyon"
    assert profile["traits"]["city"]["source"] == "web"  # the write key's source
    [stored] = await timeline(api, "user_id:u-1")
    assert stored["id"] == "s1"
    assert stored["source"] == "https://shop.example.com"
    assert stored["type"] == "com.example.order.placed"
    assert stored["time"] == "2026-01-02T03:04:05Z"
    assert stored["subject"] == "order-9"
    assert stored["tesserasource"] == "web"


async def test_structured_event_with_charset_and_extension_attribute(api: Api) -> None:
    headers = {**STRUCTURED, "Content-Type": "application/cloudevents+json; charset=utf-8"}
    event = ce("s2", traceparent="00-abc-def-01", partitionkey="k1")
    response = await api.client.post("/v1/events", headers=headers, content=orjson.dumps(event))
    assert response.status_code == 202, response.text
    await api.process()
    [stored] = await timeline(api, "user_id:u-1")
    assert stored["traceparent"] == "00-abc-def-01"
    assert stored["partitionkey"] == "k1"


async def test_binary_mode_with_json_body(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={**binary_headers("b-json"), "Content-Type": "application/json"},
        content=orjson.dumps({"userId": "u-bin", "traits": {"tier": "gold"}}),
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "ids": ["b-json"]}
    await api.process()
    profile = await api.profile("user_id:u-bin")
    assert profile["traits"]["tier"]["value"] == "gold"
    [stored] = await timeline(api, "user_id:u-bin")
    assert stored["source"] == "https://pos.example.com"
    assert stored["type"] == "com.example.store.purchase"
    assert stored["datacontenttype"] == "application/json"
    assert stored["data"] == {"userId": "u-bin", "traits": {"tier": "gold"}}


async def test_binary_mode_with_text_body(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={
            **binary_headers("b-text", **{"ce-subject": "u-text"}),
            "Content-Type": "text/plain; charset=utf-8",
        },
        content="héllo, wörld".encode(),
    )
    assert response.status_code == 202, response.text
    [message] = await _bus_events(api)
    assert message["data"] == "héllo, wörld"
    assert message["datacontenttype"] == "text/plain; charset=utf-8"
    assert message["subject"] == "u-text"


async def test_binary_mode_with_octet_stream_body_is_kept_as_base64(api: Api) -> None:
    payload = bytes(range(256))
    response = await api.client.post(
        "/v1/events",
        headers={**binary_headers("b-bytes"), "Content-Type": "application/octet-stream"},
        content=payload,
    )
    assert response.status_code == 202, response.text
    [message] = await _bus_events(api)
    assert "data_base64" in message["data"]
    assert base64.b64decode(message["data"]["data_base64"]) == payload
    assert message["datacontenttype"] == "application/octet-stream"


async def test_binary_mode_extension_headers_become_attributes(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={
            **binary_headers("b-ext", **{"ce-traceparent": "00-1-2-01"}),
            "Content-Type": "application/json",
        },
        content=b'{"userId": "u-ext"}',
    )
    assert response.status_code == 202, response.text
    [message] = await _bus_events(api)
    assert message["extensions"] == {"traceparent": "00-1-2-01"}


async def test_binary_mode_header_values_are_percent_decoded(api: Api) -> None:
    # The HTTP binding percent-encodes space, '"', '%' and non-ASCII in ce-* values.
    response = await api.client.post(
        "/v1/events",
        headers={
            **binary_headers("b-pct", **{"ce-subject": "Caf%C3%A9%20order%2025%25"}),
            "Content-Type": "application/json",
        },
        content=b'{"userId": "u-pct"}',
    )
    assert response.status_code == 202, response.text
    [message] = await _bus_events(api)
    assert message["subject"] == "Café order 25%"


async def test_binary_mode_missing_attributes_are_named(api: Api) -> None:
    headers = binary_headers("b-missing")
    del headers["ce-source"], headers["ce-type"]
    response = await api.client.post(
        "/v1/events", headers={**headers, "Content-Type": "application/json"}, content=b"{}"
    )
    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"source", "type"}
    assert await api.bus_count() == 0


async def test_binary_mode_invalid_json_body_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={**binary_headers("b-bad"), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "data"
    assert "not valid JSON" in error["reason"]


async def test_batch_mode_accepts_every_event(api: Api) -> None:
    events = [ce(f"batch-{i}", data={"userId": f"u-{i}"}) for i in range(3)]
    response = await api.client.post("/v1/events", headers=BATCH, content=orjson.dumps(events))
    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 3,
        "duplicates": 0,
        "ids": ["batch-0", "batch-1", "batch-2"],
    }
    assert await api.bus_count() == 3


async def test_empty_batch_is_accepted_with_nothing_stored(api: Api) -> None:
    response = await api.client.post("/v1/events", headers=BATCH, content=b"[]")
    assert response.status_code == 202
    assert response.json() == {"accepted": 0, "duplicates": 0, "ids": []}
    assert await api.bus_count() == 0


async def test_batch_must_be_an_array(api: Api) -> None:
    response = await api.client.post("/v1/events", headers=BATCH, content=orjson.dumps(ce()))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "(body)"


@pytest.mark.parametrize(
    "auth",
    [bearer(WRITE_KEY), basic(WRITE_KEY), basic(WRITE_KEY, "ignored-password")],
    ids=["bearer", "basic", "basic-with-password"],
)
async def test_write_key_as_bearer_or_basic_user(api: Api, auth: dict[str, str]) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={"Content-Type": "application/cloudevents+json", **auth},
        content=orjson.dumps(ce("auth-1")),
    )
    assert response.status_code == 202, response.text
    [message] = await _bus_events(api)
    assert message["source_name"] == "web"


async def test_the_write_key_decides_the_source_name(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={**STRUCTURED, **bearer(OTHER_WRITE_KEY)},
        content=orjson.dumps(ce("k-1")),
    )
    assert response.status_code == 202
    [message] = await _bus_events(api)
    assert message["source_name"] == "app"


async def test_gzip_encoded_structured_event(api: Api) -> None:
    response = await api.client.post(
        "/v1/events",
        headers={**STRUCTURED, "Content-Encoding": "gzip"},
        content=gzip.compress(orjson.dumps(ce("gz-1"))),
    )
    assert response.status_code == 202, response.text
    assert await api.bus_count() == 1


async def test_same_source_and_id_twice_is_one_event(api: Api) -> None:
    first = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(ce("d1")))
    assert first.json() == {"accepted": 1, "duplicates": 0, "ids": ["d1"]}
    # a retry, with a different body: still the same event (source, id)
    again = ce("d1", data={"userId": "u-1", "total": 99})
    second = await api.client.post("/v1/events", headers=STRUCTURED, content=orjson.dumps(again))
    assert second.status_code == 202
    assert second.json() == {"accepted": 0, "duplicates": 1, "ids": ["d1"]}
    # and once more in binary mode
    headers = binary_headers("d1", **{"ce-source": "https://shop.example.com"})
    third = await api.client.post(
        "/v1/events", headers={**headers, "Content-Type": "application/json"}, content=b"{}"
    )
    assert third.json()["duplicates"] == 1
    assert await api.bus_count() == 1
    await api.process()
    events = await timeline(api, "user_id:u-1")
    assert [e["id"] for e in events] == ["d1"]
    assert events[0]["data"]["total"] == 12.5


async def test_same_id_twice_within_one_batch_is_one_event(api: Api) -> None:
    events = [ce("dup"), ce("dup"), ce("other")]
    response = await api.client.post("/v1/events", headers=BATCH, content=orjson.dumps(events))
    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    assert response.json()["duplicates"] == 1
    assert await api.bus_count() == 2


async def test_same_id_from_another_source_is_another_event(api: Api) -> None:
    for source in ("https://a.example.com", "https://b.example.com"):
        response = await api.client.post(
            "/v1/events", headers=STRUCTURED, content=orjson.dumps(ce("same", source=source))
        )
        assert response.json()["accepted"] == 1
    assert await api.bus_count() == 2


async def _bus_events(api: Api) -> list[dict[str, Any]]:
    """The envelopes on the bus, in order (read with a throwaway consumer group)."""
    deliveries = await api.runtime.bus.fetch("events", "test-reader", 100, 0.05)
    return [orjson.loads(d.payload) for d in deliveries]
