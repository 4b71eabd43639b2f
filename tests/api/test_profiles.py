"""The profile API, its authorization, and the health endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.config import parse_config
from tests.api.helpers import READ_KEY, WRITE_KEY, Api, basic, bearer

READ = bearer(READ_KEY)


async def identify(api: Api, message_id: str, **fields: Any) -> None:
    body = {"type": "identify", "messageId": message_id, **fields}
    response = await api.client.post("/v1/identify", headers=basic(WRITE_KEY), json=body)
    assert response.status_code == 200, response.text


async def track_many(api: Api, user: str, count: int) -> None:
    batch = [
        {
            "type": "track",
            "userId": user,
            "event": f"Step {i}",
            "messageId": f"{user}-{i}",
            "timestamp": f"2026-01-01T00:00:{i:02d}Z",
        }
        for i in range(count)
    ]
    response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), json={"batch": batch})
    assert response.status_code == 200, response.text


async def test_profile_by_identifier_and_by_profile_id(api: Api) -> None:
    await identify(
        api,
        "i1",
        userId="u-1",
        anonymousId="anon-1",
        traits={"email": " Jane.Doe@Example.COM ", "phone": "+1 (415) 555-2671", "city": "Oslo"},
    )
    await api.process()
    by_user = await api.profile("user_id:u-1")
    assert by_user["id"].startswith("prf_")
    assert by_user["traits"]["city"] == {
        "value": "Oslo",
        "source": "web",
        "time": by_user["traits"]["city"]["time"],
    }
    identities = {(i["type"], i["value"]) for i in by_user["identities"]}
    assert identities == {
        ("user_id", "u-1"),
        ("anonymous_id", "anon-1"),
        ("email", "jane.doe@example.com"),
        ("phone", "+14155552671"),
    }
    for identifier in (
        by_user["id"],
        "anonymous_id:anon-1",
        "email:jane.doe@example.com",
        "email:JANE.DOE@EXAMPLE.COM",  # normalized like the events were
        "email:%20Jane.Doe@example.com%20",
        "phone:+14155552671",
        "phone:(415)%20555-2671",
    ):
        assert (await api.profile(identifier))["id"] == by_user["id"], identifier


async def test_identities_endpoint(api: Api) -> None:
    await identify(api, "i1", userId="u-2", traits={"email": "x@example.com"})
    await api.process()
    response = await api.client.get("/v1/profiles/email:X@example.com/identities", headers=READ)
    assert response.status_code == 200
    body = response.json()
    assert body["profile_id"].startswith("prf_")
    assert {(i["type"], i["value"]) for i in body["identities"]} == {
        ("user_id", "u-2"),
        ("email", "x@example.com"),
    }
    assert all(i["source"] == "web" and i["event_uid"] for i in body["identities"])
    assert body["merged_from"] == []


async def test_events_are_paged_newest_first(api: Api) -> None:
    await track_many(api, "u-pages", 7)
    await api.process()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get(
            "/v1/profiles/user_id:u-pages/events", headers=READ, params=params
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["events"]) <= 3
        seen += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"u-pages-{i}" for i in range(6, -1, -1)]


async def test_events_exact_page_has_no_next_cursor(api: Api) -> None:
    await track_many(api, "u-exact", 3)
    await api.process()
    response = await api.client.get(
        "/v1/profiles/user_id:u-exact/events", headers=READ, params={"limit": 3}
    )
    assert len(response.json()["events"]) == 3
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"cursor": "nonsense"}, None)],
)
async def test_events_bad_paging_parameters_are_400(
    api: Api, params: dict[str, Any], field: str | None
) -> None:
    await track_many(api, "u-bad", 1)
    await api.process()
    response = await api.client.get(
        "/v1/profiles/user_id:u-bad/events", headers=READ, params=params
    )
    assert response.status_code == 400
    if field:
        assert response.json()["errors"][0]["field"] == f"query.{field}"
    else:
        assert response.json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/profiles/user_id:nobody",
        "/v1/profiles/prf_00000000000000000000000000000000",
        "/v1/profiles/email:nobody@example.com/events",
        "/v1/profiles/email:nobody@example.com/identities",
    ],
)
async def test_unknown_profile_is_404(api: Api, path: str) -> None:
    response = await api.client.get(path, headers=READ)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_malformed_identifier_is_400(api: Api) -> None:
    response = await api.client.get("/v1/profiles/email:", headers=READ)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_identifier"


async def test_profile_reads_need_a_read_key(api: Api) -> None:
    await identify(api, "i1", userId="u-auth")
    await api.process()
    cases = [
        ({}, 401),
        (bearer("rk_unknown_1"), 401),
        (bearer(WRITE_KEY), 403),
        (basic(WRITE_KEY), 403),
        (bearer(READ_KEY), 200),
    ]
    for suffix in ("", "/events", "/identities"):
        for headers, status in cases:
            response = await api.client.get(f"/v1/profiles/user_id:u-auth{suffix}", headers=headers)
            assert response.status_code == status, (suffix, headers)
            if status == 401:
                assert response.json()["error"] == "unauthorized"
                assert response.headers["WWW-Authenticate"] == "Bearer"
            elif status == 403:
                assert response.json()["error"] == "forbidden"


async def test_admin_key_can_read(api: Api) -> None:
    await identify(api, "i1", userId="u-admin")
    await api.process()
    response = await api.client.get("/v1/profiles/user_id:u-admin", headers=bearer("ak_admin_123"))
    assert response.status_code == 200


async def test_key_without_profiles_read_is_403(api_with: Any) -> None:
    config = parse_config(
        {
            "sources": [{"name": "web", "write_key": WRITE_KEY}],
            "api_keys": [
                {"key": "sk_segments_1", "scopes": ["segments:read"]},
                {"key": "rk_profiles_1", "scopes": ["profiles:read"]},
            ],
        }
    )
    async with api_with(config) as api:
        await identify(api, "i1", userId="u-scope")
        await api.process()
        for suffix in ("", "/events", "/identities"):
            path = f"/v1/profiles/user_id:u-scope{suffix}"
            response = await api.client.get(path, headers=bearer("sk_segments_1"))
            assert response.status_code == 403
            assert "profiles:read" in response.json()["message"]
            response = await api.client.get(path, headers=bearer("rk_profiles_1"))
            assert response.status_code == 200
        # the demo's keys are not in this configuration
        response = await api.client.get("/v1/profiles/user_id:u-scope", headers=READ)
        assert response.status_code == 401


async def test_healthz_and_readyz(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"bus": "ok", "store": "ok"}}


async def test_readyz_is_503_when_the_bus_is_gone(api: Api) -> None:
    await api.runtime.bus.close()
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["store"] == "ok"
    assert response.json()["checks"]["bus"].startswith("unavailable")
    assert response.headers["Retry-After"] == "5"


async def test_store_outage_is_503_with_retry_after(api: Api,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.store.base import StoreUnavailable

    def down(identifier: str) -> str | None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(api.runtime.store, "resolve", down)
    response = await api.client.get("/v1/profiles/email:a@example.com",
                                    headers={"Authorization": "Bearer rk_read_123"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "unavailable"
