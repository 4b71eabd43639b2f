"""The real Segment and RudderStack Python SDKs against a real Tessera server.

Both SDKs post ``{"batch": [...], "sentAt": ...}`` to ``<host>/v1/batch`` with the
write key as the HTTP Basic user (Segment also puts ``writeKey`` in the body).
RudderStack gzips by default and counts only a 200 as success; it puts identify
traits in ``context.traits``.
"""

from __future__ import annotations

import pytest
from rudderstack.analytics.client import Client as RudderClient
from rudderstack.analytics.request import APIError as RudderAPIError
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import APIError as SegmentAPIError

from tests.api.helpers import WRITE_KEY, LiveServer

pytestmark = pytest.mark.slow


def send_everything(client: SegmentClient | RudderClient, prefix: str) -> None:
    user = f"{prefix}-user"
    client.identify(
        user,
        {"email": f" {prefix.upper()}.User@Example.COM ", "name": f"{prefix} user", "plan": "pro"},
        anonymous_id=f"{prefix}-anon-1",
        message_id=f"{prefix}-identify",
    )
    client.track(user, "Order Completed", {"total": 12.5}, message_id=f"{prefix}-track")
    client.page(user, "Docs", "Getting started", {"path": "/docs"}, message_id=f"{prefix}-page")
    client.screen(user, "App", "Settings", message_id=f"{prefix}-screen")
    client.group(user, f"{prefix}-acme", {"employees": 50}, message_id=f"{prefix}-group")
    client.alias(f"{prefix}-anon-0", user, message_id=f"{prefix}-alias")


def assert_profile(server: LiveServer, prefix: str, source: str) -> None:
    # any identifier finds the profile; the email lookup is normalized
    response = server.get(f"/v1/profiles/email:{prefix}.user@EXAMPLE.com")
    assert response.status_code == 200, response.text
    profile = response.json()
    traits = {name: t["value"] for name, t in profile["traits"].items()}
    assert traits["name"] == f"{prefix} user"
    assert traits["plan"] == "pro"
    assert "employees" not in traits  # group traits belong to the group
    assert {t["source"] for t in profile["traits"].values()} == {source}
    identities = {(i["type"], i["value"]) for i in profile["identities"]}
    assert identities == {
        ("user_id", f"{prefix}-user"),
        ("email", f"{prefix}.user@example.com"),
        ("anonymous_id", f"{prefix}-anon-1"),
        ("anonymous_id", f"{prefix}-anon-0"),  # linked by the alias call
    }
    assert profile["event_count"] == 6
    events = server.get(f"/v1/profiles/user_id:{prefix}-user/events").json()["events"]
    assert {e["id"] for e in events} == {
        f"{prefix}-{call}" for call in ("identify", "track", "page", "screen", "group", "alias")
    }
    assert {e["source"] for e in events} == {f"segment/{source}"}
    by_id = {e["id"]: e for e in events}
    assert by_id[f"{prefix}-track"]["type"] == "Order Completed"
    assert by_id[f"{prefix}-page"]["type"] == "segment.page"
    for anon in ("anon-0", "anon-1"):
        same = server.get(f"/v1/profiles/anonymous_id:{prefix}-{anon}")
        assert same.json()["id"] == profile["id"]


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_segment_sdk_sync_mode(live_server: LiveServer, gzip: bool) -> None:
    prefix = f"seg{int(gzip)}"
    client = SegmentClient(
        WRITE_KEY, host=live_server.url, sync_mode=True, gzip=gzip, max_retries=0
    )
    send_everything(client, prefix)
    live_server.process()
    assert_profile(live_server, prefix, "web")


def test_segment_sdk_batches_on_flush(live_server: LiveServer) -> None:
    errors: list[Exception] = []
    client = SegmentClient(
        "wk_app_123",
        host=live_server.url,
        gzip=True,
        upload_interval=0.05,
        max_retries=0,
        on_error=lambda exc, batch: errors.append(exc),
    )
    send_everything(client, "segq")
    client.flush()
    client.join()
    assert errors == []
    live_server.process()
    assert_profile(live_server, "segq", "app")


def test_segment_sdk_sees_an_unknown_write_key_as_a_non_retryable_error(
    live_server: LiveServer,
) -> None:
    client = SegmentClient("wk_unknown_1", host=live_server.url, sync_mode=True, max_retries=0)
    with pytest.raises(SegmentAPIError) as raised:
        client.track("u", "E")
    assert raised.value.status == 401
    assert raised.value.code == "unauthorized"


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_rudderstack_sdk_sync_mode(live_server: LiveServer, gzip: bool) -> None:
    prefix = f"rud{int(gzip)}"
    client = RudderClient(
        "wk_store_123", host=live_server.url, sync_mode=True, gzip=gzip, max_retries=0
    )
    send_everything(client, prefix)
    live_server.process()
    assert_profile(live_server, prefix, "store")


def test_rudderstack_sdk_module_api_with_data_plane_url(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rudderstack.analytics as rudder_analytics

    monkeypatch.setattr(rudder_analytics, "write_key", "wk_crm_123")
    monkeypatch.setattr(rudder_analytics, "dataPlaneUrl", live_server.url, raising=False)
    monkeypatch.setattr(rudder_analytics, "default_client", None)
    send_everything(rudder_analytics, "rudq")
    rudder_analytics.flush()
    rudder_analytics.shutdown()
    live_server.process()
    assert_profile(live_server, "rudq", "crm")


def test_rudderstack_sdk_sees_an_unknown_write_key_as_a_non_retryable_error(
    live_server: LiveServer,
) -> None:
    client = RudderClient("wk_unknown_1", host=live_server.url, sync_mode=True)
    # without a "code" in the error body this raised KeyError, which the
    # SDK's consumer retries with backoff instead of giving up
    with pytest.raises(RudderAPIError) as raised:
        client.track("u", "E")
    assert raised.value.status == 401
    assert raised.value.code == "unauthorized"
