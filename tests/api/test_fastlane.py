"""The per-interaction reads are served by the plain routes ahead of FastAPI's router."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Match, Route

from tessera.api.app import create_app
from tessera.api.fastlane import install
from tests.api.helpers import READ_KEY, Api, bearer

DECIDE_KEY = "rk_personalize_123"  # profiles:read, segments:read, decisions:read (demo config)
HOT = [
    "/v1/profiles/email:a@b.example",
    "/v1/profiles/email:a@b.example/segments",
    "/v1/profiles/email:a@b.example/next-best-action",
]


def _first_match(app: FastAPI, path: str) -> object:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


async def test_hot_reads_match_a_plain_route_first_and_stay_documented(api: Api) -> None:
    app = create_app(api.runtime)
    for path in HOT:
        route = _first_match(app, path)
        assert type(route) is Route, (path, route)
    documented = (await api.client.get("/openapi.json")).json()["paths"]
    assert "/v1/profiles/{identifier}/next-best-action" in documented
    assert "/v1/profiles/{identifier}" in documented


async def test_the_plain_routes_keep_the_endpoints_errors(api: Api) -> None:
    # the app's exception handlers and the endpoints' own checks still apply
    missing = await api.client.get(HOT[0])
    assert missing.status_code == 401
    unknown = await api.client.get(HOT[0], headers=bearer(READ_KEY))
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    outside = await api.client.get(HOT[2] + "?channel=web", headers=bearer(READ_KEY))
    assert outside.status_code == 403  # this key lacks decisions:read
    bad = await api.client.get(HOT[2] + "?limit=0", headers=bearer(DECIDE_KEY))
    assert bad.status_code == 400
    fields = {e["field"] for e in bad.json()["errors"]}
    assert fields == {"query.channel", "query.limit"}


def test_install_adds_the_three_reads() -> None:
    app = FastAPI()
    before = len(app.router.routes)
    install(app)
    added = app.router.routes[before:]
    assert [r.path for r in added if isinstance(r, Route)] == [
        "/v1/profiles/{identifier}",
        "/v1/profiles/{identifier}/segments",
        "/v1/profiles/{identifier}/next-best-action",
    ]
