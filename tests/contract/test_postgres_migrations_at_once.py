"""Every PostgreSQL port migrating one new schema at the same moment, as an API and its
workers do when they start together: none may fail on PostgreSQL's catalog."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from tessera.activation.state.postgres import PostgresActivationState
from tessera.journeys.state.postgres import PostgresJourneyState
from tessera.personalization.state.postgres import PostgresState
from tessera.privacy.records.postgres import PostgresRecords
from tessera.store.postgres import PostgresStore
from tests.services import require_postgres

pytestmark = pytest.mark.services


def test_all_ports_migrate_a_new_schema_at_once_without_error() -> None:
    base = require_postgres()
    schema = f"t_at_once_{uuid.uuid4().hex[:10]}"
    url = f"{base}?schema={schema}"
    ports: list[Callable[[], None]] = []
    for _ in range(3):  # three processes' worth of each port
        ports += [
            lambda: PostgresStore(url).migrate(),
            lambda: PostgresRecords(url).migrate(),
            lambda: PostgresActivationState(url).migrate(),
            lambda: PostgresJourneyState(url).migrate(),
            lambda: PostgresState(url).migrate(),
        ]
    start = threading.Barrier(len(ports))
    errors: list[BaseException] = []

    def run(migrate: Callable[[], None]) -> None:
        start.wait()
        try:
            migrate()
        except BaseException as exc:  # the test reports every failure
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in ports]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with psycopg.connect(base, autocommit=True) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                [schema])}
        # each port's tables exist once (a sample of each)
        assert {"schema_migrations", "trust_keys", "act_subscriptions", "jrn_timers"} <= tables
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))
