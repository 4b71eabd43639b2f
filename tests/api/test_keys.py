"""Managed keys over HTTP: scopes (401/403), revocation and rotation without a restart,
the `tessera keys` commands, rate limits (429 with Retry-After), and console logins."""

from __future__ import annotations

import re

import orjson
from typer.testing import CliRunner

from tessera.cli import app as cli
from tessera.config import PrivacyConfig, RateLimitConfig
from tessera.privacy import keys
from tests.api.conftest import DEMO_CONFIG
from tests.api.helpers import Api, bearer, ce

NO_CACHE = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(key_cache_seconds=0)})


async def test_a_managed_read_key_reads_and_is_403_outside_its_scope(api: Api) -> None:
    token, _ = keys.create(api.runtime.records, "api", scopes=["profiles:read"])
    assert (await api.client.get("/v1/stats", headers=bearer(token))).status_code == 200
    denied = await api.client.get("/v1/subscriptions", headers=bearer(token))
    assert denied.status_code == 403
    assert "admin" in denied.json()["message"]
    narrow, _ = keys.create(api.runtime.records, "api", scopes=["segments:read"])
    assert (await api.client.get("/v1/stats", headers=bearer(narrow))).status_code == 403


async def test_a_managed_write_key_ingests_for_its_source_only(api: Api) -> None:
    token, _ = keys.create(api.runtime.records, "write", source="web")
    response = await api.client.post(
        "/v1/events", headers={"Content-Type": "application/cloudevents+json", **bearer(token)},
        content=orjson.dumps(ce("mk-1")))
    assert response.status_code == 202, response.text
    assert await api.bus_count() == 1
    assert (await api.client.get("/v1/stats", headers=bearer(token))).status_code == 403


async def test_revoked_and_rotated_keys_stop_working_without_a_restart(api_with) -> None:  # type: ignore[no-untyped-def]
    async with api_with(NO_CACHE) as api:
        token, record = keys.create(api.runtime.records, "api", scopes=["profiles:read"])
        assert (await api.client.get("/v1/stats", headers=bearer(token))).status_code == 200
        new_token, new = keys.rotate(api.runtime.records, record.id)
        assert (await api.client.get("/v1/stats", headers=bearer(token))).status_code == 401
        assert (await api.client.get("/v1/stats", headers=bearer(new_token))).status_code == 200
        keys.revoke(api.runtime.records, new.id)
        assert (await api.client.get("/v1/stats", headers=bearer(new_token))).status_code == 401


async def test_the_keys_commands_reach_a_running_api(api_with) -> None:  # type: ignore[no-untyped-def]
    async with api_with(NO_CACHE) as api:
        data = str(api.runtime.data_dir)
        runner = CliRunner()
        made = runner.invoke(cli, ["keys", "create", "api", "--scope", "admin", "--data-dir",
                                   data, "--json"])
        assert made.exit_code == 0, made.output
        created = orjson.loads(made.output)
        token, key_id = created["key"], created["id"]
        assert token.startswith("ak_") and created["prefix"] == token[:12]
        assert (await api.client.get("/v1/subscriptions", headers=bearer(token))).status_code == 200
        listed = runner.invoke(cli, ["keys", "list", "--data-dir", data, "--json"])
        assert key_id in listed.output and token not in listed.output
        revoked = runner.invoke(cli, ["keys", "revoke", key_id, "--data-dir", data])
        assert revoked.exit_code == 0, revoked.output
        assert (await api.client.get("/v1/subscriptions", headers=bearer(token))).status_code == 401
        bad = runner.invoke(cli, ["keys", "create", "api", "--scope", "everything",
                                  "--data-dir", data])
        assert bad.exit_code == 1 and "unknown scope" in bad.output
        audit = runner.invoke(cli, ["audit", "list", "--data-dir", data, "--json"])
        actions = [e["action"] for e in orjson.loads(audit.output)]
        assert actions[:2] == ["keys.revoke", "keys.create"]
        assert token not in audit.output


async def test_a_key_past_its_rate_limit_gets_429_with_retry_after(api_with) -> None:  # type: ignore[no-untyped-def]
    limited = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(
        rate_limit=RateLimitConfig(requests_per_second=0.5, burst=2))})
    async with api_with(limited) as api:
        statuses = [(await api.client.get("/v1/stats", headers=bearer("rk_read_123")))
                    for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert statuses[2].json()["error"] == "rate_limited"
        assert int(statuses[2].headers["Retry-After"]) >= 1
        # another key has its own bucket; a managed key's own rate wins over the default
        token, _ = keys.create(api.runtime.records, "api", scopes=["profiles:read"],
                               rate_per_second=100.0)
        assert all([(await api.client.get("/v1/stats", headers=bearer(token))).status_code == 200
                    for _ in range(20)])


async def test_the_console_accepts_a_managed_admin_key_until_it_is_revoked(api_with) -> None:  # type: ignore[no-untyped-def]
    async with api_with(NO_CACHE) as api:
        token, record = keys.create(api.runtime.records, "api", scopes=["admin"])
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        login = await api.client.post("/console/login", headers=form,
                                      content=f"key={token}&next=/console")
        assert login.status_code == 303
        cookie = re.search(r"tessera_console=([^;]+)", login.headers["set-cookie"])
        assert cookie is not None
        api.client.cookies.set("tessera_console", cookie.group(1), path="/console")
        assert (await api.client.get("/console")).status_code == 200
        keys.revoke(api.runtime.records, record.id)
        assert (await api.client.get("/console")).status_code in (302, 303, 307)
