"""The demo's event catalog: every simulated event fits it, the malformed renewal does not,
and the console shows the refusal."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tessera.api.app import create_app
from tessera.catalog.registry import Catalog
from tessera.config import load_config
from tessera.demo import activation
from tessera.demo.catalog import MALFORMED, RENEWED, TIER_CHANGED, send_malformed, write_catalog
from tessera.demo.scenario import build_scenario
from tessera.runtime import Runtime


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The demo server's configuration file, with the catalog beside it."""
    path = activation.write_config(tmp_path, "http://127.0.0.1:9")
    write_catalog(path)
    return path


def test_the_server_reads_the_catalog_beside_its_configuration(config_file: Path) -> None:
    config = load_config(config_file)
    assert config.catalog is not None
    assert {e.type for e in config.catalog.events} == {RENEWED, TIER_CHANGED}
    # the catalog adds no identifier paths or trait mappings: resolution is unchanged
    assert all(not e.identity and not e.traits for e in config.catalog.events)


def test_every_simulated_membership_event_fits_the_catalog(config_file: Path) -> None:
    catalog = Catalog(load_config(config_file).catalog)  # type: ignore[arg-type]
    checked = 0
    for message in build_scenario(600, 6000, seed=7).messages:
        if message.protocol == "cloudevents" and message.type in (RENEWED, TIER_CHANGED):
            assert catalog.check(message.type, None, message.body["data"]) == [], message.body
            checked += 1
    assert checked > 20


def test_the_malformed_renewal_breaks_it_field_by_field(config_file: Path) -> None:
    catalog = Catalog(load_config(config_file).catalog)  # type: ignore[arg-type]
    problems = catalog.check(RENEWED, None, MALFORMED["data"])
    assert problems is not None
    assert {p.pointer for p in problems} == {"/data/tier", "/data/auto_renew"}


async def test_ingest_refuses_it_and_the_console_shows_why(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
    runtime = Runtime(load_config(config_file), tmp_path / "data")
    app = create_app(runtime)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                          base_url="http://tessera.test") as client,
    ):
        reasons = await send_malformed(client, "wk_membership_123")
        assert reasons is not None
        assert sorted(reasons) == [
            "/data/auto_renew: 'yes' is not of type 'boolean'",
            "/data/tier: 'gold' is not one of ['classic', 'plus', 'premier']"]
        await client.post("/console/login", content="key=ak_admin_123&next=/console",
                          headers={"content-type": "application/x-www-form-urlencoded"})
        page = await client.get(f"/console/catalog/types/{RENEWED}")
        assert page.status_code == 200
        violations = page.text[page.text.index('id="violations"'):]
        assert "/data/auto_renew: must be of type boolean" in violations
        assert ">rejected<" in violations
