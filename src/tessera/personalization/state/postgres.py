"""The personalization state in PostgreSQL: ``pz_*`` tables in the store's schema.

Used when the store is PostgreSQL, so that several workers (NATS consumer
group members) share one state. Two events of one profile may reach two
workers (their partition keys can differ), so a transaction takes an advisory
lock per profile it changes, in sorted order, before reading its state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from tessera.personalization.state.base import (
    OfferRecord,
    SavedAudience,
    State,
    StateTx,
    TraitStates,
)
from tessera.personalization.state.outbox import messages
from tessera.store.base import OutboxMessage, StoreUnavailable
from tessera.store.postgres import _configure, _key, create_schema, parse_url

SCHEMA = """
CREATE TABLE IF NOT EXISTS pz_traits (
    profile_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    state jsonb NOT NULL,
    PRIMARY KEY (profile_id, name)
);
CREATE TABLE IF NOT EXISTS pz_due (
    profile_id text COLLATE "C" PRIMARY KEY,
    due double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS pz_due_at ON pz_due (due);
CREATE TABLE IF NOT EXISTS pz_members (
    audience text COLLATE "C" NOT NULL,
    profile_id text COLLATE "C" NOT NULL,
    since double precision NOT NULL,
    PRIMARY KEY (audience, profile_id)
);
CREATE INDEX IF NOT EXISTS pz_members_profile ON pz_members (profile_id);
CREATE TABLE IF NOT EXISTS pz_offers (
    profile_id text COLLATE "C" NOT NULL,
    uid text COLLATE "C" NOT NULL,
    action text NOT NULL,
    channel text NOT NULL,
    outcome text NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (profile_id, uid)
);
CREATE TABLE IF NOT EXISTS pz_applied (
    uid text COLLATE "C" PRIMARY KEY,
    at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    msg_id text NOT NULL,
    key text NOT NULL,
    payload bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_audiences (
    name text COLLATE "C" PRIMARY KEY,
    definition jsonb NOT NULL,
    digest text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    evaluated text
);
"""

_OFFER_COLUMNS = "profile_id, uid, action, channel, outcome, at"


class PostgresStateTx(StateTx):
    def __init__(self, conn: psycopg.Connection[Any], namespace: bytes) -> None:
        self.conn = conn
        self.ns = namespace

    def applied(self, uids: Sequence[str]) -> set[str]:
        rows = self.conn.execute("SELECT uid FROM pz_applied WHERE uid = ANY(%s)", [list(uids)])
        return {r[0] for r in rows}

    def mark_applied(self, uids: Sequence[str], at: float) -> None:
        self.conn.execute("INSERT INTO pz_applied (uid, at) SELECT u, %s FROM unnest(%s::text[]) "
                          "AS u ON CONFLICT DO NOTHING", [at, list(uids)])

    def lock(self, profile_ids: Sequence[str]) -> None:
        keys = [_key(self.ns, "pz", p) for p in sorted(set(profile_ids))]
        for key in keys:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])

    def trait_states(self, profile_ids: Iterable[str]) -> dict[str, TraitStates]:
        ids = sorted(set(profile_ids))
        out: dict[str, TraitStates] = {p: {} for p in ids}
        rows = self.conn.execute(
            "SELECT profile_id, name, state FROM pz_traits WHERE profile_id = ANY(%s)", [ids])
        for pid, name, state in rows:
            out[pid][name] = state
        return out

    def put_trait_states(self, profile_id: str, states: TraitStates) -> None:
        if not states:
            return
        names = list(states)
        self.conn.execute(
            "INSERT INTO pz_traits (profile_id, name, state) "
            "SELECT %s, n, s FROM unnest(%s::text[], %s::jsonb[]) AS t(n, s) "
            "ON CONFLICT (profile_id, name) DO UPDATE SET state = excluded.state",
            [profile_id, names, [Jsonb(states[n]) for n in names]])

    def set_due(self, profile_id: str, due: float | None) -> None:
        if due is None:
            self.conn.execute("DELETE FROM pz_due WHERE profile_id = %s", [profile_id])
        else:
            self.conn.execute("INSERT INTO pz_due (profile_id, due) VALUES (%s, %s) "
                              "ON CONFLICT (profile_id) DO UPDATE SET due = excluded.due",
                              [profile_id, due])

    def memberships(self, profile_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        ids = sorted(set(profile_ids))
        out: dict[str, dict[str, float]] = {p: {} for p in ids}
        rows = self.conn.execute("SELECT profile_id, audience, since FROM pz_members "
                                 "WHERE profile_id = ANY(%s)", [ids])
        for pid, audience, since in rows:
            out[pid][audience] = since
        return out

    def enter(self, audience: str, profile_id: str, since: float) -> None:
        self.conn.execute("INSERT INTO pz_members (audience, profile_id, since) "
                          "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                          [audience, profile_id, since])

    def leave(self, audience: str, profile_id: str) -> None:
        self.conn.execute("DELETE FROM pz_members WHERE audience = %s AND profile_id = %s",
                          [audience, profile_id])

    def add_offers(self, records: Sequence[OfferRecord]) -> None:
        if not records:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO pz_offers ({_OFFER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(r.profile_id, r.uid, r.action, r.channel, r.outcome, r.at) for r in records])

    def offers(self, profile_ids: Iterable[str]) -> list[OfferRecord]:
        rows = self.conn.execute(
            f"SELECT {_OFFER_COLUMNS} FROM pz_offers WHERE profile_id = ANY(%s) ORDER BY at",
            [sorted(set(profile_ids))])
        return [OfferRecord(*r) for r in rows]

    def forget_offers(self, profile_id: str, before: float) -> None:
        self.conn.execute("DELETE FROM pz_offers WHERE profile_id = %s AND at < %s",
                          [profile_id, before])

    def move(self, from_id: str, into_id: str) -> None:
        self.conn.execute(
            f"INSERT INTO pz_offers ({_OFFER_COLUMNS}) SELECT %s, uid, action, channel, "
            "outcome, at FROM pz_offers WHERE profile_id = %s ON CONFLICT DO NOTHING",
            [into_id, from_id])
        self.drop([from_id])

    def drop(self, profile_ids: Sequence[str]) -> None:
        ids = list(profile_ids)
        for table in ("pz_traits", "pz_due", "pz_members", "pz_offers"):
            self.conn.execute(f"DELETE FROM {table} WHERE profile_id = ANY(%s)", [ids])

    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        if not messages:
            return
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO pz_outbox (topic, msg_id, key, payload) "
                            "VALUES (%s, %s, %s, %s)", list(messages))


class PostgresState(State):
    """``url`` is the store's URL (its ``schema`` option applies here too)."""

    def __init__(self, url: str, pool_max_size: int = 4) -> None:
        self.conninfo, settings = parse_url(url, {})
        self.schema = settings.schema
        self._ns = self.schema.encode()
        self._lock = threading.Lock()
        self._ready = False
        self._pool = ConnectionPool(self.conninfo, kwargs={"autocommit": True}, min_size=1,
                                    max_size=pool_max_size, timeout=settings.pool_timeout,
                                    configure=_configure, name=f"tessera-pz-{self.schema}",
                                    open=False)

    def migrate(self) -> None:
        with self._lock:
            if not self._ready:
                self._pool.open(wait=False)
                with self._pool.connection() as conn:
                    create_schema(conn, self.schema)
                    conn.execute("SELECT pg_advisory_lock(%s)", [_key(self._ns, "pz.migrate")])
                    try:
                        conn.execute(SCHEMA.encode())
                    finally:
                        conn.execute("SELECT pg_advisory_unlock(%s)",
                                     [_key(self._ns, "pz.migrate")])
                self._ready = True

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        self.migrate()
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"personalization state: no connection: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[StateTx]:
        with self._connection() as conn, conn.transaction():
            yield PostgresStateTx(conn, self._ns)

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(query, list(params)).fetchall()

    def due(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT profile_id FROM pz_due WHERE due <= %s ORDER BY due LIMIT %s", [now, limit])]

    def trait_states_of(self, profile_id: str) -> TraitStates:
        return dict(self._rows("SELECT name, state FROM pz_traits WHERE profile_id = %s",
                               [profile_id]))

    def memberships_of(self, profile_id: str) -> dict[str, float]:
        return dict(self._rows("SELECT audience, since FROM pz_members WHERE profile_id = %s",
                               [profile_id]))

    def offers_of(self, profile_id: str) -> list[OfferRecord]:
        return [OfferRecord(*r) for r in self._rows(
            f"SELECT {_OFFER_COLUMNS} FROM pz_offers WHERE profile_id = %s ORDER BY at",
            [profile_id])]

    def members(self, audience: str, after: str | None, limit: int) -> list[tuple[str, float]]:
        return [(r[0], r[1]) for r in self._rows(
            "SELECT profile_id, since FROM pz_members WHERE audience = %s AND profile_id > %s "
            "ORDER BY profile_id LIMIT %s", [audience, after or "", limit])]

    def sizes(self) -> dict[str, int]:
        return dict(self._rows("SELECT audience, count(*) FROM pz_members GROUP BY audience"))

    def profile_ids(self) -> list[str]:
        return [r[0] for r in self._rows(
            "SELECT profile_id FROM pz_traits UNION SELECT profile_id FROM pz_members "
            "UNION SELECT profile_id FROM pz_offers UNION SELECT profile_id FROM pz_due "
            "ORDER BY 1")]

    def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        # a row of compact records holds up to a thousand messages: a few rows at a time
        out: list[OutboxMessage] = []
        after = 0
        while len(out) < limit:
            rows = self._rows("SELECT id, topic, msg_id, key, payload FROM pz_outbox "
                              "WHERE id > %s ORDER BY id LIMIT %s", [after, min(limit, 16)])
            if not rows:
                break
            out += messages([(i, t, m, k, bytes(p)) for i, t, m, k, p in rows],
                            limit - len(out))
            after = rows[-1][0]
        return out

    def delete_outbox(self, ids: Sequence[int]) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM pz_outbox WHERE id = ANY(%s)", [list(ids)])

    def reset(self) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("TRUNCATE pz_traits, pz_due, pz_members, pz_offers, pz_applied")

    # -- saved audiences ----------------------------------------------------------------

    def saved_audiences(self) -> list[SavedAudience]:
        return [SavedAudience(name, definition, digest, created, updated, evaluated == digest)
                for name, definition, digest, created, updated, evaluated in self._rows(
                    "SELECT name, definition, digest, created_at, updated_at, evaluated "
                    "FROM pz_audiences ORDER BY name")]

    def save_audience(self, name: str, definition: dict[str, Any], digest: str,
                      at: float) -> bool:
        # xmax = 0 only for a row this statement inserted (not for one it updated)
        rows = self._rows(
            "INSERT INTO pz_audiences (name, definition, digest, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "definition = excluded.definition, digest = excluded.digest, "
            "updated_at = excluded.updated_at RETURNING (xmax = 0)",
            [name, Jsonb(definition), digest, at, at])
        return bool(rows[0][0])

    def delete_audience(self, name: str) -> bool:
        with self._connection() as conn:
            return conn.execute("DELETE FROM pz_audiences WHERE name = %s",
                                [name]).rowcount == 1

    def mark_evaluated(self, name: str, digest: str) -> None:
        with self._connection() as conn:
            conn.execute("UPDATE pz_audiences SET evaluated = %s WHERE name = %s "
                         "AND digest = %s", [digest, name, digest])

    def audiences_version(self) -> tuple[int, float, int]:
        count, total, evaluated = self._rows(
            "SELECT count(*), coalesce(sum(updated_at), 0), "
            "count(*) FILTER (WHERE evaluated = digest) FROM pz_audiences")[0]
        return int(count), float(total), int(evaluated)

    def present(self) -> bool:
        """Whether the ``pz_*`` tables exist in the schema (without creating them)."""
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                row = conn.execute("SELECT to_regclass(%s)",
                                   [f'"{self.schema}".pz_members']).fetchone()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"personalization state: cannot connect: {exc}") from exc
        return bool(row and row[0])

    def close(self) -> None:
        with self._lock:
            self._pool.close()
            self._ready = False
