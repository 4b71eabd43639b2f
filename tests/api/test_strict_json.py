"""Strict JSON at every ingest endpoint: each hostile body is a 400 naming the reason."""

from __future__ import annotations

import pytest

from tests.api.helpers import WRITE_KEY, Api, basic, bearer

STRUCTURED = {"Content-Type": "application/cloudevents+json", **bearer(WRITE_KEY)}
EVENT = b'"specversion":"1.0","id":"e1","source":"s","type":"t"'

CASES = [
    (b"{" + EVENT + b',"id":"e2"}', "duplicate key 'id'"),
    (b"{" + EVENT + b', "data": {"a": 1, "a" : 2}}', "duplicate key 'a'"),
    (b"{" + EVENT + b',"data":{"q\\"":1,"q\\"":2}}', "duplicate key 'q\"'"),
    (b"{" + EVENT + b',"data":' + b'[' * 80 + b']' * 80 + b"}", "nested deeper than 64"),
    (b"{" + EVENT + b',"data":{"n":123456789012345678901234567890}}', "number too large"),
    (b"{" + EVENT + b',"data":{"n":-1e300}}', "number too large"),
    (b"{" + EVENT + b',"data":{"n":1e400}}', "infinity"),
    (b"{" + EVENT + b',"data":{"n":NaN}}', "not valid JSON"),
    (b"{" + EVENT + b',"data":"\xc3\x28"}', "UTF-8"),
    (b"{" + EVENT + b',"data":"\\udc00"}', "surrogate"),
    (b"[" * 5000 + b"]" * 5000, "depth"),
]


@pytest.mark.parametrize(("body", "reason"), CASES)
async def test_hostile_json_is_400_with_the_reason(api: Api, body: bytes, reason: str) -> None:
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid_json"
    assert error["errors"][0]["field"] == "(body)"
    assert reason in error["errors"][0]["reason"]
    assert await api.bus_count() == 0


async def test_segment_batch_with_a_duplicate_key_is_refused(api: Api) -> None:
    body = b'{"batch":[{"type":"track","event":"E","userId":"u","userId":"v"}]}'
    response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), content=body)
    assert response.status_code == 400
    assert "duplicate key 'userId'" in response.json()["errors"][0]["reason"]


async def test_strings_that_look_like_keys_are_not_duplicates(api: Api) -> None:
    body = (b"{" + EVENT + b',"data":{"a":":x","b":" :y","c":"q\\":","userId":"u-9",'
            b'"big":9223372036854775807}}')
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=body)
    assert response.status_code == 202, response.text  # 2^63 - 1 is the largest accepted
    over = body.replace(b"9223372036854775807", b"9223372036854775808").replace(b"e1", b"e2")
    response = await api.client.post("/v1/events", headers=STRUCTURED, content=over)
    assert response.status_code == 400
    assert "number too large" in response.json()["errors"][0]["reason"]
