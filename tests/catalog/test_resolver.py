"""Fat delivery of notification events: the claim-check resolver against a real HTTP server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tessera.catalog.registry import Catalog
from tessera.catalog.resolver import ResolveError, Resolver
from tessera.config import parse_config
from tests.catalog.conftest import READ, catalog_section, make_config
from tests.http_server import LocalHTTPServer

NOTIFY = "com.example.membership.member.changed"


class Owner:
    """The owning service: GET /members/{id}?version=N, with scripted failures and delays."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.fail_next = 0  # answer 503 this many times
        self.delay_next = 0  # sleep this long once
        self.members = {"M-1": {"member_number": "M-1", "city": "Bergen"}}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if owner.delay_next:
                    delay, owner.delay_next = owner.delay_next, 0
                    time.sleep(delay)
                if owner.fail_next:
                    owner.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                member = owner.members.get(self.path.split("?")[0].rsplit("/", 1)[-1])
                body = json.dumps(member).encode()
                self.send_response(200 if member else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LocalHTTPServer(Handler)
        self.url = self.server.base_url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def owner() -> Iterator[Owner]:
    service = Owner()
    yield service
    service.close()


def catalog(url: str, **resolver: Any) -> Catalog:
    section = catalog_section()
    section["events"].append({
        "type": NOTIFY, "domain": "membership", "kind": "entity_change", "entity": "member",
        "delivery": "notification",
        "resolver": {"url": url + "/members/{id}?version={version}", "timeout_seconds": 0.5,
                     "retries": 2, "backoff_seconds": 0.01, "cache_seconds": 30, **resolver},
    })
    config = parse_config({"catalog": section, "identity": {"identifiers": [
        {"type": "member_number"}]}})
    assert config.catalog is not None
    return Catalog(config.catalog)


def notification(entity_id: str = "M-1", version: int = 3, op: str = "u") -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"n-{entity_id}-{version}", "source": "membership",
            "type": NOTIFY, "data": {"op": op, "entity": "member", "id": entity_id,
                                     "version": version}}


async def test_notification_is_fattened_from_the_owning_service(owner: Owner) -> None:
    resolver = Resolver(catalog(owner.url))
    try:
        fat = await resolver.fatten(notification())
        assert fat["data"] == {"op": "u", "entity": "member", "id": "M-1", "version": 3,
                               "before": None, "after": owner.members["M-1"],
                               "changed": None, "resolved": True}
        assert owner.requests == ["/members/M-1?version=3"]
        # within cache_seconds the same version is not fetched again
        await resolver.fatten(notification())
        assert len(owner.requests) == 1 and resolver.fetches == 1
        # a new version is another URL: fetched
        await resolver.fatten(notification(version=4))
        assert len(owner.requests) == 2
        # a deletion is not fetched; a fat event is passed through
        gone = await resolver.fatten(notification(op="d", version=5))
        assert gone["data"]["after"] is None and len(owner.requests) == 2
        fat_already = {**notification(), "data": {"after": {"x": 1}, "id": "M-1"}}
        assert await resolver.fatten(fat_already) is fat_already
    finally:
        await resolver.aclose()


async def test_the_cache_expires(owner: Owner) -> None:
    now = [1000.0]
    resolver = Resolver(catalog(owner.url, cache_seconds=5), clock=lambda: now[0])
    try:
        await resolver.fatten(notification())
        now[0] += 4
        await resolver.fatten(notification())
        assert len(owner.requests) == 1
        now[0] += 2  # past the 5 s
        owner.members["M-1"] = {"member_number": "M-1", "city": "Tromsø"}
        fat = await resolver.fatten(notification())
        assert len(owner.requests) == 2 and fat["data"]["after"]["city"] == "Tromsø"
    finally:
        await resolver.aclose()


async def test_failures_are_retried_then_reported(owner: Owner) -> None:
    resolver = Resolver(catalog(owner.url))
    try:
        owner.fail_next = 2  # two 503s, then success: within 2 retries
        fat = await resolver.fatten(notification())
        assert fat["data"]["after"]["city"] == "Bergen" and len(owner.requests) == 3
        owner.fail_next = 3  # more failures than retries
        with pytest.raises(ResolveError, match="status 503 \\(3 attempts\\)"):
            await resolver.fatten(notification(version=9))
        # a missing entity is not an error: after is null
        fat = await resolver.fatten(notification("M-404", version=1))
        assert fat["data"]["after"] is None
    finally:
        await resolver.aclose()


async def test_a_slow_owner_times_out_and_the_retry_succeeds(owner: Owner) -> None:
    resolver = Resolver(catalog(owner.url, timeout_seconds=0.3))
    try:
        owner.delay_next = 1.0  # the first request outlives the 0.3 s timeout
        started = time.monotonic()
        fat = await resolver.fatten(notification())
        assert fat["data"]["after"]["city"] == "Bergen"
        assert len(owner.requests) == 2 and time.monotonic() - started < 1.0
    finally:
        await resolver.aclose()
    resolver = Resolver(catalog(owner.url, timeout_seconds=0.2, retries=0))
    try:
        owner.delay_next = 1.0
        with pytest.raises(ResolveError, match="timed out"):
            await resolver.fatten(notification(version=7))
    finally:
        await resolver.aclose()


async def test_resolve_endpoint(owner: Owner, app_for: Callable) -> None:
    section = catalog_section()
    section["events"].append({
        "type": NOTIFY, "kind": "entity_change", "entity": "member", "delivery": "notification",
        "resolver": {"url": owner.url + "/members/{id}"}})
    async with app_for(make_config(section)) as api:
        r = await api.client.post("/v1/catalog/resolve", json=notification(), headers=READ)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["after"] == owner.members["M-1"]
