"""POST /v1/imports and GET /v1/imports/{id}."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tessera.api.app import create_app
from tessera.runtime import Runtime
from tests.imports.conftest import CONFIG

ADMIN = {"Authorization": "Bearer ak_admin_123"}
MAPPING = {"identifiers": {"email": "Email"}, "traits": {"first_name": "FirstName"}}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime(CONFIG, tmp_path / "data")
    app = create_app(runtime)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://tessera.test") as http):
        yield http, runtime


async def wait_done(http: httpx.AsyncClient, import_id: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = (await http.get(f"/v1/imports/{import_id}", headers=ADMIN)).json()
        if body["status"] != "running":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError("the import did not finish")


async def test_import_a_server_side_file(client: tuple[httpx.AsyncClient, Runtime],
                                         tmp_path: Path) -> None:
    http, runtime = client
    path = tmp_path / "crm.csv"
    path.write_text("Email,FirstName\na@example.com,Ann\n,nobody\n")
    started = await http.post("/v1/imports", headers=ADMIN, json={
        "path": str(path), "source": "crm", "mapping": MAPPING})
    assert started.status_code == 202
    body = await wait_done(http, started.json()["import_id"])
    assert body["status"] == "done"
    assert (body["summary"]["imported"], body["summary"]["rejected"]) == (1, 1)
    assert runtime.store.resolve("email:a@example.com") is not None


async def test_upload_a_file_as_the_body(client: tuple[httpx.AsyncClient, Runtime]) -> None:
    http, runtime = client
    started = await http.post(
        "/v1/imports", headers={**ADMIN, "Content-Type": "application/x-ndjson"},
        params={"source": "crm", "mapping": orjson.dumps(MAPPING).decode()},
        content=b'{"Email": "b@example.com", "FirstName": "Bo"}\n')
    assert started.status_code == 202, started.text
    body = await wait_done(http, started.json()["import_id"])
    assert body["summary"]["imported"] == 1
    assert runtime.store.resolve("email:b@example.com") is not None


async def test_imports_need_the_admin_scope_and_valid_input(
        client: tuple[httpx.AsyncClient, Runtime], tmp_path: Path) -> None:
    http, _ = client
    read_only = {"Authorization": "Bearer rk_read_123"}
    assert (await http.post("/v1/imports", headers=read_only, json={})).status_code == 403
    assert (await http.post("/v1/imports", json={})).status_code == 401
    path = tmp_path / "x.csv"
    path.write_text("Email\na@example.com\n")
    bad = await http.post("/v1/imports", headers=ADMIN, json={
        "path": str(path), "source": "nope", "mapping": MAPPING})
    assert bad.status_code == 400 and "unknown source" in bad.json()["message"]
    bad = await http.post("/v1/imports", headers=ADMIN, json={
        "path": str(path), "source": "crm", "mapping": {"traits": {}}})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_mapping"
    assert (await http.get("/v1/imports/imp_0", headers=ADMIN)).status_code == 404
