"""Change data capture with wal2json on a private wal_level=logical cluster, to a real Tessera."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tessera.publish import Publisher
from tessera.relay.cdc import CdcRelay
from tests.relay.conftest import Server


@pytest.fixture
def crm(logical_pg: str) -> Iterator[tuple[str, str]]:
    """(dsn, table) of a legacy CRM table with REPLICA IDENTITY FULL (whole before images)."""
    table = f"members_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(logical_pg, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (member_number text PRIMARY KEY, name text, "
                     f"city text)")
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        conn.execute(f"CREATE TABLE {table}_other (id int PRIMARY KEY)")
    yield logical_pg, table
    with psycopg.connect(logical_pg, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name LIKE %s", (f"{table}%",))
        conn.execute(f"DROP TABLE {table}, {table}_other")


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn) as conn:  # one transaction
        for statement in statements:
            conn.execute(statement)


def relay_for(dsn: str, table: str, pub: Any, **kw: Any) -> CdcRelay:
    relay = CdcRelay(dsn, [table], pub, slot=f"{table}_slot",
                     type_prefix="com.example.crm.member", entity="member", **kw)
    relay.ensure_slot()
    return relay


def test_inserts_updates_deletes_become_entity_changes(crm: tuple[str, str],
                                                       tessera_server: Server) -> None:
    dsn, table = crm
    with Publisher(tessera_server.url, "wk_crm_123", "crm") as pub:
        relay = relay_for(dsn, table, pub)
        sql(dsn, f"INSERT INTO {table} VALUES ('M-1', 'Ann', 'Oslo')",
            f"INSERT INTO {table}_other VALUES (1)")  # not captured
        sql(dsn, f"UPDATE {table} SET city = 'Bergen' WHERE member_number = 'M-1'")
        sql(dsn, f"DELETE FROM {table} WHERE member_number = 'M-1'")
        assert relay.drain() == 3
        assert relay.lag_bytes() == 0
        relay.close()
    events = tessera_server.events()
    assert [e["type"] for e in events] == ["com.example.crm.member.created",
                                           "com.example.crm.member.updated",
                                           "com.example.crm.member.deleted"]
    created, updated, deleted = (e["data"] for e in events)
    assert created["op"] == "c" and created["before"] is None
    assert created["after"] == {"member_number": "M-1", "name": "Ann", "city": "Oslo"}
    assert updated["op"] == "u" and updated["changed"] == ["city"]
    assert updated["before"]["city"] == "Oslo" and updated["after"]["city"] == "Bergen"
    assert deleted["op"] == "d" and deleted["after"] is None
    assert deleted["before"]["city"] == "Bergen" and deleted["id"] == "M-1"
    assert created["source"]["table"] == table and created["source"]["lsn"]
    # the member number in the row is an identifier: all three on one profile
    assert all(("member_number", "M-1") in [tuple(i) for i in e["identifiers"]] for e in events)


def test_restart_after_a_crash_loses_nothing_and_duplicates_nothing(
        crm: tuple[str, str], tessera_server: Server) -> None:
    dsn, table = crm
    with Publisher(tessera_server.url, "wk_crm_123", "crm") as pub:
        relay = relay_for(dsn, table, pub, batch_size=5)
        for i in range(12):
            sql(dsn, f"INSERT INTO {table} VALUES ('M-{i}', 'n', 'c{i}')")

        class Crash(Exception):
            pass

        sent: list[str] = []

        class CrashAfterPublishing:
            def send_batch(self, batch: list[dict[str, Any]]) -> None:
                pub.send_batch(batch)
                sent.extend(e["id"] for e in batch)
                raise Crash  # published, but the slot is never advanced

        relay.sender = CrashAfterPublishing()
        with pytest.raises(Crash):
            relay.publish_once()
        relay.close()  # the process is gone
        assert sent and relay.lag_bytes() > 0
        sql(dsn, f"UPDATE {table} SET city = 'moved' WHERE member_number = 'M-3'")
        restarted = relay_for(dsn, table, pub, batch_size=5)  # the same slot
        assert restarted.drain() == 13
        assert restarted.lag_bytes() == 0
        assert restarted.drain() == 0
        restarted.close()
    ids = [e["id"] for e in tessera_server.events()]
    assert len(ids) == 13 and len(set(ids)) == 13  # the re-read changes were the same events
    assert set(sent) <= set(ids)


def test_slot_lag_and_wal_level_checks(crm: tuple[str, str]) -> None:
    dsn, table = crm
    relay = relay_for(dsn, table, None)
    sql(dsn, f"INSERT INTO {table} VALUES ('M-1', 'Ann', 'Oslo')")
    assert relay.lag_bytes() > 0  # nobody read the change yet
    relay.drop_slot()
    with pytest.raises(RuntimeError, match="no replication slot"):
        relay.lag_bytes()
    relay.close()
