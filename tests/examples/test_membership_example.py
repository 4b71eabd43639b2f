"""The membership example end to end: an address change through the outbox and a legacy CRM
table through CDC both end up as traits of one unified profile."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tessera.config import load_config
from tessera.publish import Publisher
from tessera.relay.cdc import CdcRelay
from tessera.relay.outbox import OutboxRelay
from tessera.runtime import Runtime
from tests.relay.conftest import Server, serve
from tests.relay.pgcluster import shared_logical_cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "membership"
READ = {"Authorization": "Bearer rk_example_read"}


def _service_module() -> Any:
    spec = importlib.util.spec_from_file_location("membership_example", EXAMPLE / "service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def logical_pg() -> Iterator[str]:
    with shared_logical_cluster() as dsn:
        yield dsn


@pytest.fixture
def database(logical_pg: str) -> Iterator[str]:
    name = f"membership_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(logical_pg, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = logical_pg.rsplit("/", 1)[0] + "/" + name
    yield dsn
    with psycopg.connect(logical_pg, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = %s", (name,))
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def tessera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
    yield from serve(load_config(EXAMPLE / "tessera.yaml"), tmp_path / "tessera")


def process(server: Server) -> None:
    async def run() -> None:
        runtime = Runtime(server.config, server.data_dir)
        await runtime.start()
        try:
            stats = await runtime.worker().run_until_idle()
            assert stats.dead_lettered == 0
        finally:
            await runtime.close()

    asyncio.run(run())


def test_outbox_and_cdc_end_up_in_one_profile(database: str, tessera: Server) -> None:
    service = _service_module().MembershipService(database)
    service.setup()
    service.join("M-1001", "ada@example.com", {"street": "1 Main St", "city": "Oslo",
                                               "postcode": "0150"})
    cdc = CdcRelay(database, ["contacts"], None, slot="contacts_cdc",
                   type_prefix="com.example.crm.contact", entity="contact", source="crm")
    cdc.ensure_slot()
    # the legacy CRM writes its table, knowing nothing of Tessera
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO contacts VALUES ('M-1001', 'Ada@Example.com', NULL, 'email')")
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE contacts SET preferred_channel = 'sms', phone = '+14155550134' "
                     "WHERE member_number = 'M-1001'")
    service.change_address("M-1001", {"street": "2 Fjord Rd", "city": "Bergen",
                                      "postcode": "5003"})

    with Publisher(tessera.url, "wk_membership_example", "membership-service") as pub:
        outbox = OutboxRelay(database, pub)
        assert outbox.drain() == 1
        outbox.close()
    with Publisher(tessera.url, "wk_crm_example", "crm") as pub:
        cdc.sender = pub
        assert cdc.drain() == 2
        assert cdc.lag_bytes() == 0
        cdc.close()
    process(tessera)

    profile = httpx.get(f"{tessera.url}/v1/profiles/member_number:M-1001", headers=READ,
                        timeout=10).json()
    traits = {name: t["value"] for name, t in profile["traits"].items()}
    assert traits["address"] == {"street": "2 Fjord Rd", "city": "Bergen", "postcode": "5003"}
    assert profile["traits"]["address"]["source"] == "membership"
    assert traits["preferred_channel"] == "sms"
    assert traits["phone"] == "+14155550134"
    identities = {(i["type"], i["value"]) for i in profile["identities"]}
    assert {("member_number", "M-1001"), ("email", "ada@example.com"),
            ("phone", "+14155550134")} <= identities
    # nothing was quarantined or refused on the way
    violations = httpx.get(f"{tessera.url}/v1/catalog/violations", headers=READ,
                           timeout=10).json()
    assert violations == {"violations": []}
