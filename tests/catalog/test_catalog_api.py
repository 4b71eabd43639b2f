"""GET /v1/catalog, the AsyncAPI document, and the catalog commands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from tessera.cli import app as cli_app
from tests.catalog.conftest import (
    ADDRESS_CHANGED,
    READ,
    TICKET_STATUS,
    catalog_section,
    key,
    make_config,
    member_event,
)


async def test_catalog_is_served(app_for: Callable) -> None:
    async with app_for(make_config()) as api:
        r = await api.client.get("/v1/catalog", headers=READ)
        assert r.status_code == 200
        body = r.json()
        types = {e["type"]: e for e in body["event_types"]}
        member = types[ADDRESS_CHANGED]
        assert (member["domain"], member["source"], member["kind"], member["entity"],
                member["operation"]) == ("membership", "membership", "entity_change", "member",
                                         "update")
        assert member["pii"] == ["data.after.city", "data.after.postcode"]
        assert member["versions"][0]["dataschema"] == f"urn:tessera:schema:{ADDRESS_CHANGED}:v1"
        assert types[TICKET_STATUS]["process"] == "roadside_assistance"
        assert body["sources"]["roadservice"] == {"validation": "quarantine",
                                                  "unknown_types": "allow"}
        assert (await api.client.get("/v1/catalog")).status_code == 401


async def test_asyncapi_document(app_for: Callable) -> None:
    async with app_for(make_config()) as api:
        r = await api.client.get("/v1/asyncapi.json", headers=READ)
        assert r.status_code == 200
        doc = r.json()
    assert doc["asyncapi"] == "3.0.0"
    key_ = ADDRESS_CHANGED
    channel = doc["channels"][key_]
    assert channel["address"] == ADDRESS_CHANGED
    assert channel["messages"][key_] == {"$ref": f"#/components/messages/{key_}"}
    operation = doc["operations"][f"receive.{key_}"]
    assert operation["action"] == "receive"
    assert operation["channel"] == {"$ref": f"#/channels/{key_}"}
    message = doc["components"]["messages"][key_]
    assert message["contentType"] == "application/cloudevents+json"
    payload = message["payload"]
    assert payload["properties"]["type"] == {"type": "string", "const": ADDRESS_CHANGED}
    assert payload["properties"]["data"]["required"] == ["op", "entity", "id", "after"]
    assert message["x-tessera-pii"] == ["data.after.city", "data.after.postcode"]
    assert f"{key_}.v1" in doc["components"]["schemas"]
    # every reference resolves inside the document
    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


async def test_cli_violations_check_and_release(tmp_path: Path, app_for: Callable) -> None:
    section = catalog_section()
    config_file = tmp_path / "tessera.yaml"
    raw = {
        "sources": [{"name": "membership", "write_key": "wk_membership_123",
                     "validation": "quarantine"}],
        "api_keys": [{"key": "ak_admin_123", "scopes": ["admin"]}],
        "identity": {"identifiers": [{"type": "member_number", "limit": 1}]},
        "catalog": section,
    }
    config_file.write_text(yaml.safe_dump(raw))
    from tessera.config import load_config

    data = tmp_path / "data"  # the app_for fixture's data directory
    async with app_for(load_config(config_file)) as api:
        r = await api.client.post("/v1/events", json=member_event("q1", postcode=5),
                                  headers={**key("membership"),
                                           "Content-Type": "application/cloudevents+json"})
        assert r.json()["quarantined"] == 1
    runner = CliRunner()

    async def invoke(args: list[str]) -> Any:
        return await asyncio.to_thread(runner.invoke, cli_app, args)

    args = ["--config", str(config_file), "--data-dir", str(data)]
    result = await invoke(["catalog", "violations", "--json", *args])
    assert result.exit_code == 0, result.output
    assert "/data/after/postcode: must be of type string" in result.output
    result = await invoke(["catalog", "quarantine", *args])
    assert result.exit_code == 0 and "q1" in result.output
    result = await invoke(["catalog", "release", "--all", *args])
    assert result.exit_code == 1  # still invalid: the schema did not change
    assert "still invalid" in result.output
    result = await invoke(["catalog", "check", "--config", str(config_file)])
    assert result.exit_code == 0 and "3 event type(s)" in result.output
    # a previous catalog whose published v1 is edited in a breaking way is caught
    old = tmp_path / "old.yaml"
    previous = catalog_section()
    previous["events"][0]["versions"][0]["schema"]["properties"]["after"]["properties"][
        "postcode"] = {"type": "integer"}
    old.write_text(yaml.safe_dump({**raw, "catalog": previous}))
    result = await invoke(["catalog", "check", "--config", str(config_file),
                                     "--against", str(old)])
    assert result.exit_code == 1
    assert "v1 was changed: /after/postcode: type changed from integer to string" in (
        result.output)
