"""Faults with real processes: kill -9 workers mid-batch, restart NATS and PostgreSQL under load.

Every test ends with the exact check of ``workload.check_store``: each event
applied exactly once (the applied records, the timeline and every profile's
``event_count`` agree with the events sent), nothing missing, nothing twice.

The shared NATS and PostgreSQL of the machine are used through a stream
prefix and a schema of the test's own; tests that stop a server start a
private one on a free port (see ``servers``), never the shared ones.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.scaleout.deploy import (
    Deployment,
    log_lines,
    wait_caught_up,
    wait_log,
    worker_stats,
)
from tests.scaleout.servers import (
    PrivateNats,
    PrivatePostgres,
    Schema,
    postgres_schema,
    shared_nats,
    shared_postgres,
)
from tests.scaleout.workload import (
    READ,
    WRITE,
    SendResult,
    applied_count,
    build,
    check_store,
    send,
    wait_applied,
    wire,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

# short leases and acknowledgement waits, so a killed worker's partitions and
# unacknowledged messages come back within seconds
FAST = {"lease_ttl": 3, "ack_wait": 4}


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def effects(schema: Schema) -> tuple[int, int, int]:
    """(applied records, timeline rows, sum of event counts): equal unless a batch half-applied."""
    with psycopg.connect(schema.server, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {s}.applied), (SELECT count(*) FROM {s}.timeline),"
            " (SELECT coalesce(sum(event_count), 0) FROM {s}.profiles)").format(
                s=sql.Identifier(schema.name))).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@contextlib.contextmanager
def applied_table_locked(schema: Schema) -> Iterator[None]:
    """Hold an EXCLUSIVE lock on the applied records: reads go on, a batch's commit waits.

    A worker's batch reads, locks and resolves, then writes its effects and
    its applied records in one transaction; with this lock held it stops at
    that write, with its transaction open. So a worker seen waiting on it is
    certainly in the middle of a batch.
    """
    conn = psycopg.connect(schema.server, connect_timeout=5)
    try:
        conn.execute(sql.SQL("LOCK TABLE {}.applied IN EXCLUSIVE MODE").format(
            sql.Identifier(schema.name)))
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def batches_waiting(schema: Schema) -> int:
    """Worker transactions of this test blocked on a lock, i.e. mid-batch."""
    with psycopg.connect(schema.server, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                           " AND wait_event_type = 'Lock' AND xact_start IS NOT NULL",
                           [schema.app]).fetchone()
    assert row is not None
    return int(row[0])


@contextlib.contextmanager
def outbox_delete_held(schema: Schema) -> Iterator[None]:
    """Make the worker's next outbox delete wait: a batch committed and not yet acknowledged.

    After committing a batch, a worker relays the batch's derived events from
    the outbox to the bus, deletes them from the outbox, and only then
    acknowledges the batch. A trigger makes that delete wait for an advisory
    lock the test holds, so a worker seen waiting there has committed a batch
    that the bus will deliver again.
    """
    key = random.getrandbits(63)
    s = sql.Identifier(schema.name)
    with psycopg.connect(schema.server, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
        conn.execute(sql.SQL(
            "CREATE FUNCTION {s}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_advisory_xact_lock_shared({k}); RETURN OLD; END $$").format(
                s=s, k=sql.Literal(key)))
        conn.execute(sql.SQL("CREATE TRIGGER hold BEFORE DELETE ON {s}.outbox "
                             "FOR EACH ROW EXECUTE FUNCTION {s}.hold()").format(s=s))
        try:
            yield
        finally:
            conn.execute(sql.SQL("DROP TRIGGER hold ON {s}.outbox").format(s=s))
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])


def last_batch_size(schema: Schema) -> int:
    """Events of the last committed batch (a batch records its events with one time)."""
    with psycopg.connect(schema.server, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql.SQL(
            "SELECT count(*) FROM {s}.applied WHERE at = (SELECT max(at) FROM {s}.applied)"
        ).format(s=sql.Identifier(schema.name))).fetchone()
    assert row is not None
    return int(row[0])


def test_worker_killed_mid_batch_and_before_ack_applies_every_event_once(
        tmp_path: Path) -> None:
    workload = build(people=150, per_person=20)  # 3,000 events
    with shared_nats(**FAST) as bus_url, shared_postgres() as schema:
        deployment = Deployment(tmp_path, bus_url, schema.store_url, batch_size=300)
        try:
            api = deployment.api()
            send(api.url, workload.events)  # a backlog before any worker runs
            worker = deployment.worker()
            wait_until(lambda: applied_count(schema.server, schema.name) >= 300, 90,
                       "the first batches")
            # 1. SIGKILL in the middle of a batch, its transaction open
            with applied_table_locked(schema):
                wait_until(lambda: batches_waiting(schema) == 1, 30, "a batch to be in flight")
                before = effects(schema)
                worker.kill9()
            time.sleep(0.5)
            after = effects(schema)
            # the batch in flight left nothing behind, and what committed before is whole
            assert after == before, (before, after)
            assert 0 < after[0] < workload.total
            assert after[0] == after[1] == after[2]

            # 2. SIGKILL after a batch committed, before the bus heard of it
            worker = deployment.worker()
            with outbox_delete_held(schema):
                wait_until(lambda: batches_waiting(schema) == 1, 90,
                           "a committed batch waiting to be acknowledged")
                committed = effects(schema)
                unacknowledged = last_batch_size(schema)
                worker.kill9()
            assert after[0] < committed[0] < workload.total and unacknowledged > 0

            restarted = deployment.worker()
            wait_applied(schema.server, schema.name, workload.total, timeout=120)
            wait_caught_up(api.url, timeout=60)
            restarted.stop()
            stats = worker_stats(restarted)
            check_store(schema.server, schema.name, workload)
        finally:
            deployment.stop_all()
    # the committed batch came again and was recognised: applied once, not twice
    assert stats["applied"] == workload.total - committed[0]
    assert stats["duplicates"] == unacknowledged


def test_one_of_three_workers_killed_mid_batch_while_the_others_go_on(tmp_path: Path) -> None:
    workload = build(people=200, per_person=20)  # 4,000 events
    with shared_nats(**FAST) as bus_url, shared_postgres() as schema:
        deployment = Deployment(tmp_path, bus_url, schema.store_url, batch_size=200)
        try:
            api, workers = deployment.start(3)
            sender = threading.Thread(target=send, args=(api.url, workload.events),
                                      kwargs={"batch": 100, "threads": 1}, daemon=True)
            sender.start()
            wait_until(lambda: applied_count(schema.server, schema.name) >= 400, 90,
                       "the first batches")
            with applied_table_locked(schema):
                # all three stop at their next commit: each is in the middle of a batch
                wait_until(lambda: batches_waiting(schema) == 3, 30, "three batches in flight")
                workers[1].kill9()
                killed_at = utc_now()
            survivors = [workers[0], workers[2]]
            sender.join(120)
            assert not sender.is_alive()
            wait_applied(schema.server, schema.name, workload.total, timeout=120)
            wait_caught_up(api.url, timeout=60)
            for w in survivors:
                w.stop()
            # the survivors took over the dead worker's partitions
            assert sum(claims_since(w, killed_at) for w in survivors) > 0
            check_store(schema.server, schema.name, workload)
        finally:
            deployment.stop_all()


def claims_since(worker: Any, since: str) -> int:
    """Partitions a worker claimed after ``since`` (an ISO UTC time, as the logs write it)."""
    return sum(1 for line in log_lines(worker)
               if line.get("event") == "nats.partition_claimed"
               and line.get("timestamp", "") > since)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_nats_restart_under_load_503_while_down_then_catch_up(tmp_path: Path) -> None:
    workload = build(people=150, per_person=20)
    probe = workload.events[-1]  # sent alone while NATS is down, then after
    events = workload.events[:-1]
    nats_server = PrivateNats(tmp_path).start()
    try:
        with shared_postgres() as schema:
            bus_url = f"{nats_server.url}?lease_ttl=3&ack_wait=4"
            deployment = Deployment(tmp_path, bus_url, schema.store_url, batch_size=200)
            try:
                api, _ = deployment.start(2)
                sent = SendResult()
                sender = threading.Thread(
                    target=_send_into, args=(api.url, events, sent), daemon=True)
                sender.start()
                wait_until(lambda: applied_count(schema.server, schema.name) >= 300, 90,
                           "processing under load")

                nats_server.stop()  # the bus goes away in the middle of the load
                r = httpx.post(f"{api.url}/v1/events", headers=WRITE, json=wire([probe]),
                               timeout=30)
                assert r.status_code == 503, r.text
                assert r.headers.get("Retry-After", "").isdigit()
                assert httpx.get(f"{api.url}/readyz", timeout=30).status_code == 503
                r = httpx.get(f"{api.url}/v1/consumers", headers=READ, timeout=30)
                assert r.status_code == 503 and r.headers.get("Retry-After", "").isdigit()
                time.sleep(2)
                nats_server.start()

                # the probe was refused, not stored: after the restart it is new
                wait_until(lambda: _post(api.url, probe) == 202, 30, "the API to reconnect")
                sender.join(120)
                assert not sender.is_alive() and sent.accepted > 0
                wait_applied(schema.server, schema.name, workload.total, timeout=120)
                wait_caught_up(api.url, timeout=60)
                check_store(schema.server, schema.name, workload)
            finally:
                deployment.stop_all()
    finally:
        nats_server.stop()


def _post(url: str, event: dict[str, Any]) -> int:
    try:
        r = httpx.post(f"{url}/v1/events", headers=WRITE, json=wire([event]), timeout=30)
    except httpx.HTTPError:
        return 0
    if r.status_code == 202:
        assert r.json()["accepted"] == 1, r.text  # not a duplicate: it was never stored
    return r.status_code


def _send_into(url: str, events: list[dict[str, Any]], result: SendResult) -> None:
    r = send(url, events, batch=100, threads=1, timeout=150, pause=0.02)
    result.accepted, result.duplicates, result.unavailable = r.accepted, r.duplicates, r.unavailable


def test_postgres_restart_under_load_workers_reconnect_and_catch_up(tmp_path: Path) -> None:
    workload = build(people=150, per_person=20)
    pg = PrivatePostgres()
    try:
        pg.start()
        with shared_nats(**FAST) as bus_url, postgres_schema(pg.url) as schema:
            deployment = Deployment(tmp_path, bus_url, schema.store_url, batch_size=200)
            try:
                api = deployment.api()
                # one process running two workers of the group
                workers = deployment.worker("--concurrency", "2")
                wait_log(workers, "nats.partition_claimed", timeout=90)
                sender = threading.Thread(target=send, args=(api.url, workload.events),
                                          kwargs={"batch": 100, "threads": 1, "pause": 0.02},
                                          daemon=True)
                sender.start()
                wait_until(lambda: applied_count(schema.server, schema.name) >= 300, 90,
                           "processing under load")
                pg.stop("immediate")  # a crash: recovery at the next start
                time.sleep(2)
                pg.start()
                sender.join(150)
                assert not sender.is_alive()
                wait_applied(schema.server, schema.name, workload.total, timeout=120)
                wait_caught_up(api.url, timeout=60)
                check_store(schema.server, schema.name, workload)
            finally:
                deployment.stop_all()
    finally:
        pg.destroy()
