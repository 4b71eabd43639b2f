"""The transactional outbox and its relay, against the real PostgreSQL and a real Tessera."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tessera.publish import Publisher, entity_change_event
from tessera.publish.client import PublishError
from tessera.relay.outbox import OutboxRelay, add_event, create_outbox, pending
from tests.relay.conftest import Server
from tests.relay.pgcluster import wait_until
from tests.services import require_postgres

TYPE = "com.example.membership.member.address_changed"


@pytest.fixture
def outbox_db() -> Iterator[tuple[str, str]]:
    """(dsn, table): an outbox and a members table in a schema of its own on the shared server."""
    dsn = require_postgres()
    schema = f"outbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.members (number text PRIMARY KEY, city text, "
                     f"version int NOT NULL)")
        create_outbox(conn, f"{schema}.outbox")
    try:
        yield dsn, schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def change_address(dsn: str, schema: str, number: str, city: str, fail: bool = False) -> None:
    """The business transaction: the row and its event commit together, or neither does."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT city, version FROM {schema}.members WHERE number = %s "
                           f"FOR UPDATE", (number,)).fetchone()
        before = {"member_number": number, "city": row[0]} if row else None
        version = (row[1] + 1) if row else 1
        conn.execute(f"INSERT INTO {schema}.members VALUES (%s, %s, %s) ON CONFLICT (number) "
                     f"DO UPDATE SET city = excluded.city, version = excluded.version",
                     (number, city, version))
        event = entity_change_event(TYPE, "membership-service", "member", number,
                                    "update" if row else "create", version=version,
                                    before=before, after={"member_number": number, "city": city})
        add_event(conn, event, table=f"{schema}.outbox", channel=f"{schema}_outbox")
        if fail:
            raise RuntimeError("the business logic failed after writing")


def test_rows_are_published_in_order_and_marked(outbox_db: tuple[str, str],
                                                tessera_server: Server) -> None:
    dsn, schema = outbox_db
    for i in range(5):
        change_address(dsn, schema, "M-1", f"city-{i}")
    with pytest.raises(RuntimeError):
        change_address(dsn, schema, "M-1", "rolled-back", fail=True)
    assert pending(dsn, f"{schema}.outbox") == 5  # the rolled-back change left no event
    with Publisher(tessera_server.url, "wk_membership_123", "membership-service") as pub:
        relay = OutboxRelay(dsn, pub, table=f"{schema}.outbox", batch_size=2)
        assert relay.drain() == 5
        relay.close()
    assert pending(dsn, f"{schema}.outbox") == 0
    events = tessera_server.events()
    assert [e["data"]["after"]["city"] for e in events] == [f"city-{i}" for i in range(5)]
    assert [e["data"]["version"] for e in events] == [1, 2, 3, 4, 5]
    assert events[1]["data"]["changed"] == ["city"] and events[1]["data"]["op"] == "u"


class CrashAfterSend:
    """Publishes, then 'crashes' before the relay can mark the rows (once)."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.crashed = False

    def send_batch(self, batch: list[dict[str, Any]]) -> None:
        self.inner.send_batch(batch)
        if not self.crashed:
            self.crashed = True
            raise PublishError("crash after publishing", status=None)


def test_a_crash_after_publishing_republishes_with_the_same_ids(
        outbox_db: tuple[str, str], tessera_server: Server) -> None:
    dsn, schema = outbox_db
    for i in range(3):
        change_address(dsn, schema, f"M-{i}", "Oslo")
    with Publisher(tessera_server.url, "wk_membership_123", "membership-service") as pub:
        crashing = CrashAfterSend(pub)
        relay = OutboxRelay(dsn, crashing, table=f"{schema}.outbox")
        with pytest.raises(PublishError):
            relay.publish_once()
        assert pending(dsn, f"{schema}.outbox") == 3  # not marked: the transaction rolled back
        assert relay.drain() == 3  # sent again, same ids
        relay.close()
        assert pub.sent == 6
    ids = [e["id"] for e in tessera_server.events()]
    assert len(ids) == 3 and len(set(ids)) == 3


def test_refused_events_are_set_aside_and_the_rest_published(
        outbox_db: tuple[str, str], tessera_server: Server) -> None:
    dsn, schema = outbox_db
    change_address(dsn, schema, "M-1", "Oslo")
    with psycopg.connect(dsn) as conn:
        bad = {"specversion": "1.0", "id": "bad-1", "source": "membership-service",
               "type": TYPE, "time": "not a time", "data": {}}
        add_event(conn, bad, table=f"{schema}.outbox")
    change_address(dsn, schema, "M-2", "Bergen")
    with Publisher(tessera_server.url, "wk_membership_123", "membership-service") as pub:
        relay = OutboxRelay(dsn, pub, table=f"{schema}.outbox")
        assert relay.drain() == 3
        relay.close()
    assert relay.stats.published == 2 and relay.stats.failed == 1
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT error FROM {schema}.outbox WHERE event_id = 'bad-1'"
                           ).fetchone()
    assert row is not None and "time" in row[0]
    assert [e["data"]["after"]["city"] for e in tessera_server.events()] == ["Oslo", "Bergen"]


def test_notify_wakes_the_relay(outbox_db: tuple[str, str], tessera_server: Server) -> None:
    dsn, schema = outbox_db
    stop = threading.Event()
    with Publisher(tessera_server.url, "wk_membership_123", "membership-service") as pub:
        relay = OutboxRelay(dsn, pub, table=f"{schema}.outbox", channel=f"{schema}_outbox",
                            poll_seconds=30.0)  # only a NOTIFY can wake it in time
        thread = threading.Thread(target=relay.run, args=(stop.is_set, 20.0), daemon=True)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        change_address(dsn, schema, "M-9", "Tromsø")
        wait_until(lambda: len(tessera_server.events()) == 1, timeout=5)
        assert time.monotonic() - started < 5
        stop.set()
        # the relay notices the stop on its next wake-up: one more event wakes it
        change_address(dsn, schema, "M-9", "Bodø")
        thread.join(10)
        assert not thread.is_alive()


def test_relay_restart_loses_nothing_and_duplicates_nothing(
        outbox_db: tuple[str, str], tessera_server: Server) -> None:
    """`tessera relay outbox` killed with SIGKILL while a service writes, then started again."""
    dsn, schema = outbox_db
    total = 60
    cmd = [sys.executable, "-m", "tessera", "relay", "outbox", "--dsn", dsn,
           "--url", tessera_server.url, "--write-key", "wk_membership_123",
           "--table", f"{schema}.outbox", "--channel", f"{schema}_outbox",
           "--batch-size", "5", "--poll-seconds", "0.2"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    relay = start()
    try:
        for i in range(total):
            change_address(dsn, schema, f"M-{i % 7}", f"city-{i}")
            if i == total // 3:
                wait_until(lambda: len(tessera_server.events()) > 0, timeout=20)
                os.killpg(relay.pid, signal.SIGKILL)
                relay.wait(10)
                relay = start()
        wait_until(lambda: pending(dsn, f"{schema}.outbox") == 0, timeout=30)
    finally:
        if relay.poll() is None:
            os.killpg(relay.pid, signal.SIGTERM)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(relay.pid, signal.SIGKILL)
                relay.wait(10)
    events = tessera_server.events()
    ids = [e["id"] for e in events]
    assert len(ids) == total and len(set(ids)) == total  # nothing lost, nothing twice
    with psycopg.connect(dsn) as conn:
        expected = {r[0] for r in conn.execute(f"SELECT event_id FROM {schema}.outbox")}
    assert set(ids) == expected
    # per member, the events arrived in the order of their versions (commit order)
    by_member: dict[str, list[int]] = {}
    for e in events:
        by_member.setdefault(e["data"]["id"], []).append(e["data"]["version"])
    for versions in by_member.values():
        assert versions == sorted(versions)
