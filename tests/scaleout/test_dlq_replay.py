"""Dead letters and replay with real processes on NATS + PostgreSQL.

A poison event (its timeline write fails, through a trigger the test puts in
the store) is retried, then dead-lettered without holding back the others;
``tessera dlq list | show | replay`` find it, show its error and message, and
deliver it again once the cause is fixed. ``tessera replay --group profiles
--from beginning --rebuild`` then re-derives every profile from the retained
stream, and ``--from TIME`` delivers again exactly the events appended since
TIME. The consumer lag per group (``GET
/v1/consumers``) is checked exactly along the way.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tessera.events.envelope import event_uid
from tests.scaleout.deploy import Deployment, lag, wait_caught_up, worker_stats
from tests.scaleout.servers import Schema, shared_nats, shared_postgres
from tests.scaleout.workload import READ, build, check_store, send, wait_applied

pytestmark = [pytest.mark.services, pytest.mark.slow]

POISON_TYPE = "com.example.crm.poison"


def poison_store(schema: Schema, on: bool) -> None:
    """Make every timeline write of a poison-type event fail (a bug in the store), or stop it."""
    s = sql.Identifier(schema.name)
    with psycopg.connect(schema.server, autocommit=True, connect_timeout=5) as conn:
        if on:
            conn.execute(sql.SQL(
                "CREATE FUNCTION {s}.poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.type = {t} THEN RAISE EXCEPTION 'poisoned event %', NEW.event_uid; "
                "END IF; RETURN NEW; END $$").format(s=s, t=sql.Literal(POISON_TYPE)))
            conn.execute(sql.SQL("CREATE TRIGGER poison BEFORE INSERT ON {s}.timeline "
                                 "FOR EACH ROW EXECUTE FUNCTION {s}.poison()").format(s=s))
        else:
            conn.execute(sql.SQL("DROP TRIGGER poison ON {s}.timeline").format(s=s))


def test_dead_letters_and_replay(tmp_path: Path) -> None:
    workload = build(people=50, per_person=20)  # 1,000 events
    first, second = workload.events[:600], workload.events[600:]
    poison = first[100]
    poison["type"] = POISON_TYPE  # trait mappings and identifiers do not depend on it
    uid = event_uid("crm", "crm", poison["id"])

    with shared_nats(lease_ttl=3) as bus_url, shared_postgres() as schema:
        deployment = Deployment(tmp_path, bus_url, schema.store_url, batch_size=200,
                                max_attempts=2)
        try:
            api = deployment.api()
            poison_store(schema, on=True)
            send(api.url, first)
            r = httpx.get(f"{api.url}/v1/consumers", headers=READ, timeout=10)
            assert r.status_code == 200
            consumers = r.json()
            assert {"group": "profiles", "topic": "events", "lag": len(first)} in consumers
            # the demo configuration has personalization: its group reads events and derived
            assert {(c["group"], c["topic"]) for c in consumers} == {
                ("profiles", "events"), ("personalization", "events"),
                ("personalization", "derived")}
            assert httpx.get(f"{api.url}/v1/consumers", timeout=10).status_code == 401

            worker = deployment.worker()
            wait_applied(schema.server, schema.name, len(first) - 1, timeout=90)
            wait_caught_up(api.url, timeout=60)  # the poison event is out of the way

            listed = deployment.cli("dlq", "list")
            assert listed.returncode == 0, listed.stderr
            assert "1 dead letter(s)" in listed.stdout, listed.stdout
            row = next(line for line in listed.stdout.splitlines() if uid in line)
            letter = re.findall(r"\d+", row)[0]
            shown = deployment.cli("dlq", "show", letter)
            assert shown.returncode == 0, shown.stderr
            body = json.loads(shown.stdout)
            assert body["message_id"] == uid and body["group"] == "profiles"
            assert body["attempts"] == 2 and body["replayed_at"] is None
            assert f"poisoned event {uid}" in body["error"]
            assert (body["message"]["id"], body["message"]["type"]) == (poison["id"], POISON_TYPE)

            poison_store(schema, on=False)  # the fix
            replayed = deployment.cli("dlq", "replay", letter)
            assert replayed.returncode == 0, replayed.stderr
            assert "1 dead letter(s) queued for replay" in replayed.stdout
            wait_applied(schema.server, schema.name, len(first), timeout=60)

            time.sleep(1.0)
            since = datetime.now(UTC)
            time.sleep(1.0)
            send(api.url, second)
            wait_applied(schema.server, schema.name, workload.total, timeout=90)
            wait_caught_up(api.url, timeout=60)
            check_store(schema.server, schema.name, workload)
            worker.stop()

            # from a time: exactly the events appended since are delivered again
            again = deployment.cli("replay", "--group", "profiles", "--from",
                                   since.isoformat().replace("+00:00", "Z"))
            assert again.returncode == 0, again.stderr
            assert f"{len(second)} event(s) will be delivered again" in again.stdout
            assert lag(api.url) == len(second)

            # re-derive every profile from the retained stream
            rebuild = deployment.cli("replay", "--group", "profiles", "--from", "beginning",
                                     "--rebuild")
            assert rebuild.returncode == 0, rebuild.stderr
            assert f"{workload.total} event(s) will be delivered again" in rebuild.stdout
            assert lag(api.url) == workload.total
            assert httpx.get(f"{api.url}/v1/stats", headers=READ,
                             timeout=10).json()["store"]["profiles"] == 0
            worker = deployment.worker()
            wait_applied(schema.server, schema.name, workload.total, timeout=90)
            wait_caught_up(api.url, timeout=60)
            worker.stop()
            check_store(schema.server, schema.name, workload)
            stats = worker_stats(worker)
            assert (stats["applied"], stats["duplicates"]) == (workload.total, 0)
        finally:
            deployment.stop_all()
