"""The publisher SDK against a real Tessera server, and its retries against a flaky one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tessera.config import parse_config
from tessera.publish import (
    AsyncPublisher,
    Publisher,
    PublishError,
    changed_fields,
    entity_change_event,
)
from tests.relay.conftest import RELAY_CONFIG, Server, serve

TYPE = "com.example.membership.member.address_changed"
STEP = "com.example.roadservice.ticket.status_changed"


@pytest.fixture
def tessera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
    yield from serve(parse_config(RELAY_CONFIG), tmp_path / "tessera")


def test_envelopes() -> None:
    assert changed_fields({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == ["b", "c", "d"]
    fat = entity_change_event(TYPE, "svc", "member", "M-1", "update", version=3,
                              before={"city": "Oslo"}, after={"city": "Bergen"})
    assert fat["data"] == {"op": "u", "entity": "member", "id": "M-1", "version": 3,
                           "before": {"city": "Oslo"}, "after": {"city": "Bergen"},
                           "changed": ["city"]}
    assert fat["subject"] == "member/M-1"
    again = entity_change_event(TYPE, "svc", "member", "M-1", "u", version=3,
                                before={"city": "Oslo"}, after={"city": "Bergen"})
    assert again["id"] == fat["id"]  # idempotent: the same change is the same event
    thin = entity_change_event(TYPE, "svc", "member", "M-1", "update", version=3,
                               notification=True)
    assert thin["data"] == {"op": "u", "entity": "member", "id": "M-1", "version": 3}
    with pytest.raises(ValueError, match="op must be"):
        entity_change_event(TYPE, "svc", "member", "M-1", "upsert")


def test_sync_publisher_batches(tessera: Server) -> None:
    with Publisher(tessera.url, "wk_membership_123", "membership-service", batch_size=3) as pub:
        for v in range(1, 8):
            pub.publish_entity_change(TYPE, "member", "M-1", "update", version=v,
                                      after={"member_number": "M-1", "city": f"c{v}"})
        assert pub.sent == 6 and len(pub.queue) == 1  # two full batches went already
        pub.publish_process_step(STEP, "roadside_assistance", "driver_assigned", "T-1",
                                 {"member_number": "M-1"})
    assert pub.sent == 8 and pub.attempts == 3
    events = tessera.events()
    assert [e["data"].get("version") for e in events] == [1, 2, 3, 4, 5, 6, 7, None]
    assert events[-1]["data"]["step"] == "driver_assigned"
    # publishing the same changes again adds nothing (deterministic ids)
    with Publisher(tessera.url, "wk_membership_123", "membership-service") as pub:
        for v in range(1, 8):
            pub.publish_entity_change(TYPE, "member", "M-1", "update", version=v,
                                      after={"member_number": "M-1", "city": f"c{v}"})
    assert len(tessera.events()) == 8


async def test_async_publisher(tessera: Server) -> None:
    async with AsyncPublisher(tessera.url, "wk_membership_123", "svc", batch_size=50) as pub:
        for i in range(120):
            await pub.publish_entity_change(TYPE, "member", f"M-{i}", "create", version=1,
                                            after={"member_number": f"M-{i}"})
    assert pub.sent == 120 and pub.attempts == 3
    assert len(tessera.events()) == 120


def test_refusals_are_not_retried(tessera: Server) -> None:
    pub = Publisher(tessera.url, "wk_membership_123", "svc")
    bad = entity_change_event(TYPE, "svc", "member", "M-1", "update", version=1)
    bad["time"] = "yesterday"
    pub.publish(bad)
    with pytest.raises(PublishError) as exc:
        pub.flush()
    assert exc.value.status == 400 and exc.value.errors[0]["field"] == "time"
    assert pub.attempts == 1
    pub.queue.clear()
    pub.close()
    with pytest.raises(PublishError) as exc, Publisher(tessera.url, "wk_nobody_123", "svc") as p:
        p.publish(entity_change_event(TYPE, "svc", "member", "M-1", "update", version=1))
    assert exc.value.status == 401


class Flaky:
    """Answers 503 (with Retry-After 0) ``failures`` times, then 202; records every body."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[list[dict[str, Any]]] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                flaky.bodies.append(body)
                if flaky.failures:
                    flaky.failures -= 1
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                out = json.dumps({"accepted": len(body)}).encode()
                self.send_response(202)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retries_keep_the_ids() -> None:
    flaky = Flaky(failures=2)
    try:
        with Publisher(flaky.url, "wk_x_12345678", "svc", backoff_seconds=0.01) as pub:
            pub.publish_process_step(STEP, "p", "s", "T-1")
        assert len(flaky.bodies) == 3 and pub.sent == 1
        assert len({b[0]["id"] for b in flaky.bodies}) == 1  # the same id every time
        flaky.failures = 10
        pub = Publisher(flaky.url, "wk_x_12345678", "svc", max_retries=2, backoff_seconds=0.01)
        pub.publish_process_step(STEP, "p", "s", "T-2")
        with pytest.raises(PublishError, match="giving up after 3 attempts"):
            pub.flush()
        pub.queue.clear()
        pub.close()
    finally:
        flaky.close()


def test_connection_errors_are_retried() -> None:
    flaky = Flaky(failures=0)
    url = flaky.url
    flaky.close()  # nobody listens there any more
    pub = Publisher(url, "wk_x_12345678", "svc", max_retries=2, backoff_seconds=0.01)
    pub.publish_process_step(STEP, "p", "s", "T-3")
    with pytest.raises(PublishError, match="giving up after 3 attempts"):
        pub.flush()
    assert pub.attempts == 3
    pub.queue.clear()
    pub.close()
