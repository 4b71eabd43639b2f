"""Concurrency correctness: four worker processes, 20,000 colliding events, exact profiles.

Why this exercises concurrency: the bus orders events by partition key, an
event's highest-priority identifier, and every person's events carry
different subsets of their five identifiers (see ``workload``), so one
person's events have up to five keys, spread over the 16 partitions, which
four workers share (each owns about a quarter of them). So the events of one
person are applied by different workers at the same time: each creates a
profile for the identifiers it sees first, and the chain events merge them,
racing the trait updates and further merges of the other workers. The test
asserts that the spread is real before it starts, and that each worker
applied a share of the events. Then it checks the exact expected outcome:
one profile per person, exactly their identifiers, the traits of the latest
event time, ``event_count`` equal to the number of distinct events (the
exactly-once counter: duplicates sent again change nothing), and an identity
graph with no link, trait or timeline entry left on a merged-away profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scaleout.deploy import Deployment, wait_caught_up, worker_stats
from tests.scaleout.servers import shared_nats, shared_postgres
from tests.scaleout.workload import build, check_api, check_store, send, wait_applied

pytestmark = [pytest.mark.services, pytest.mark.slow]

PEOPLE = 1000
PER_PERSON = 20
DUPLICATES = 1000
WORKERS = 4
PARTITIONS = 16


def test_four_workers_apply_colliding_events_exactly(tmp_path: Path) -> None:
    workload = build(PEOPLE, PER_PERSON, duplicates=DUPLICATES)
    assert workload.total == 20_000
    spread = workload.partitions_per_person(PARTITIONS)
    # nearly everyone's events are spread over at least three partitions
    assert sum(s >= 3 for s in spread) >= 0.95 * PEOPLE, sorted(spread)[:20]

    with shared_nats(partitions=PARTITIONS, lease_ttl=3) as bus_url, \
            shared_postgres() as schema:
        deployment = Deployment(tmp_path, bus_url, schema.store_url)
        try:
            api, workers = deployment.start(WORKERS)
            sent = send(api.url, workload.events, batch=500, threads=2, timeout=180)
            assert (sent.accepted, sent.duplicates) == (workload.total, 0)
            again = send(api.url, workload.duplicates, batch=250, threads=1)
            assert (again.accepted, again.duplicates) == (0, DUPLICATES)
            wait_applied(schema.server, schema.name, workload.total, timeout=240)
            wait_caught_up(api.url, timeout=60)
            for w in workers:
                w.stop()
            applied = [worker_stats(w)["applied"] for w in workers]
            check_store(schema.server, schema.name, workload)
            check_api(api.url, workload)
        finally:
            deployment.stop_all()
    # every worker did part of the work, and together each event exactly once
    assert all(n > 0 for n in applied), applied
    assert sum(applied) == workload.total, applied
