"""The server store: profiles in PostgreSQL, shared by several worker processes.

Where SQLite has one writer at a time, here several processors run their
transactions concurrently, so the store does what the contract asks of a
multi-writer backend (``single_writer = False``):

* ``lock_identifiers`` takes transaction-scoped advisory locks on a stable
  64-bit hash of each identifier, in sorted order. Two transactions that see
  the same identifier are serialized before either looks it up, so two workers
  never both create a profile for one new identifier.
* ``lock_profiles`` takes the profiles' row locks (``FOR UPDATE``, sorted by
  id). A merge moves identities and timeline *by profile id* while holding
  them, and the resolver looks its identifiers up again after locking, so a
  merge committed by another worker in between is seen, not overwritten.
* Deadlocks, serialization failures and unique violations on ``identities`` /
  ``applied`` (another worker won a race) become :class:`Conflict`, which makes
  the processor retry the whole batch.

Transactions run at READ COMMITTED on purpose: every statement sees what
committed before it started, which is what "look up again after locking"
relies on. A snapshot isolation level would hide the very commits the locks
waited for.

Speed comes from round trips, not from SQL: a batch of 500 events would
otherwise cost thousands of statements. So a transaction runs in psycopg's
pipeline mode, and :class:`PostgresTx` keeps writes in memory and sends them
at commit as a few multi-row ``unnest`` statements; only reads whose answer
depends on them (a merge, ``identifiers_of``) send them earlier. What this
transaction has locked it also remembers (which identifier belongs to which
profile, a profile's traits): nobody else can change those until it commits,
so later events of the same person in the batch need no round trip at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import errors, pq, sql
from psycopg.adapt import Dumper
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from tessera.store.base import (
    Conflict,
    Erased,
    Identifier,
    IdentityLink,
    MergeRecord,
    OutboxMessage,
    Profile,
    Store,
    StoreTx,
    StoreUnavailable,
    TimelineEntry,
    Trait,
)

__all__ = ["MIGRATIONS", "Migration", "PostgresStore", "PostgresTx", "StoreUnavailable", "migrate"]

log = logging.getLogger("tessera.store.postgres")

DEFAULT_SCHEMA = "tessera"
RECONNECT_TIMEOUT = 5.0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema's history. Applied steps are never edited: add a new one."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "profiles, identities, traits, timeline, merges, applied events, outbox",
        # Key columns use the "C" collation: byte order, as in SQLite, and
        # cheaper comparisons in every primary key and index.
        """
        CREATE TABLE profiles (
            id text COLLATE "C" PRIMARY KEY,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            event_count bigint NOT NULL DEFAULT 0,
            merged_into text COLLATE "C"
        );
        -- a merge redirects the profiles that pointed at the merged one
        CREATE INDEX profiles_merged_into ON profiles (merged_into)
            WHERE merged_into IS NOT NULL;

        CREATE TABLE identities (
            type text COLLATE "C" NOT NULL,
            value text COLLATE "C" NOT NULL,
            profile_id text COLLATE "C" NOT NULL,
            event_uid text NOT NULL,
            linked_at double precision NOT NULL,
            source text NOT NULL,
            reason text NOT NULL,
            PRIMARY KEY (type, value)
        );
        CREATE INDEX identities_profile ON identities (profile_id);

        -- traits as jsonb so segments can be computed in SQL
        CREATE TABLE traits (
            profile_id text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            value jsonb NOT NULL,
            source text NOT NULL,
            time double precision NOT NULL,
            priority integer NOT NULL,
            event_uid text NOT NULL,
            PRIMARY KEY (profile_id, name)
        );

        -- the event is kept as the exact JSON bytes it was given (an opaque
        -- document: no parsing on write, no key reordering on read); the
        -- primary key doubles as the index for keyset paging, newest first
        CREATE TABLE timeline (
            profile_id text COLLATE "C" NOT NULL,
            time double precision NOT NULL,
            event_uid text COLLATE "C" NOT NULL,
            type text NOT NULL,
            source text NOT NULL,
            received_at double precision NOT NULL,
            event bytea NOT NULL,
            PRIMARY KEY (profile_id, time, event_uid)
        );

        CREATE TABLE merges (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            into_id text COLLATE "C" NOT NULL,
            merged_id text COLLATE "C" NOT NULL,
            event_uid text NOT NULL,
            at double precision NOT NULL,
            reason text NOT NULL
        );
        CREATE INDEX merges_into ON merges (into_id);

        CREATE TABLE applied (
            event_uid text COLLATE "C" PRIMARY KEY,
            at double precision NOT NULL
        );

        CREATE TABLE outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            topic text NOT NULL,
            message_id text NOT NULL,
            key text NOT NULL,
            payload bytea NOT NULL
        );
        """,
    ),
)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Settings:
    """What the store takes from the URL's query string or keyword options (not libpq's)."""

    schema: str = DEFAULT_SCHEMA
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 10.0
    """Seconds ``transaction()`` and reads wait for a connection before StoreUnavailable."""
    auto_migrate: bool = True
    """Migrate on first use, like the SQLite store (``tessera migrate`` does it explicitly)."""


_SETTING_TYPES: dict[str, type] = {
    "schema": str,
    "pool_min_size": int,
    "pool_max_size": int,
    "pool_timeout": float,
    "auto_migrate": bool,
}

# Sensible libpq defaults, used unless the URL says otherwise: fail fast when
# the server is unreachable, and notice a dead peer even without traffic.
_LIBPQ_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "tessera",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def _coerce(name: str, value: Any) -> Any:
    kind = _SETTING_TYPES[name]
    if kind is bool and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return kind(value)


def parse_url(url: str, options: dict[str, Any]) -> tuple[str, Settings]:
    """Split ``url`` into a libpq URL and the store's own settings.

    Tessera's options (``schema``, ``pool_*``, ``auto_migrate``) may come in the
    query string or as keyword options (these win); libpq would refuse them,
    so they are taken out. The schema goes into libpq's ``options`` as the
    session's ``search_path``, so every pooled connection, including one the
    pool opens after a server restart, starts in the right schema without an
    extra statement.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - set(_SETTING_TYPES)
    if unknown:
        raise TypeError(f"unknown PostgresStore options: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name in _SETTING_TYPES:
        if name in query:
            values[name] = _coerce(name, query.pop(name))
        if name in options:
            values[name] = _coerce(name, options[name])
    settings = Settings(**values)
    if not _SCHEMA_NAME.match(settings.schema):
        raise ValueError(
            f"schema name {settings.schema!r}: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    for key, default in _LIBPQ_DEFAULTS.items():
        query.setdefault(key, default)
    # A session left idle inside a transaction (a stuck client) would hold its
    # identifier and profile locks and stall every other worker: end it.
    extra = query.get("options", "")
    query["options"] = (
        f"-c idle_in_transaction_session_timeout=60s {extra} -c search_path={settings.schema}"
    )
    libpq_url = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    return libpq_url, settings


# --------------------------------------------------------------------------- helpers


def create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS``, safe when several processes and ports (each under
    its own migration lock) run it at the same moment: PostgreSQL can then report the
    schema as a duplicate, which means it exists, which is all that was asked."""
    try:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
        if not conn.autocommit:
            raise  # the transaction is aborted; the caller's retry starts afresh


def _key(namespace: bytes, *parts: str) -> int:
    """A stable signed 64-bit advisory-lock key (the same in every process and release).

    Python's ``hash()`` is salted per process, so it cannot be used. The
    schema is part of the key: stores in different schemas of one database
    (tests, tenants) do not contend.
    """
    data = namespace + b"\x00" + "\x00".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


_CONFLICT_TABLES = frozenset({"identities", "applied", "timeline"})
"""Tables whose primary key another worker's commit can take from us: an identifier
linked, an event applied (its timeline entry moved by a merge included) meanwhile."""


def _is_conflict(exc: BaseException) -> bool:
    """Whether a retry of the whole unit of work may succeed (another writer won a race)."""
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("40") or state == "55P03":
        # class 40 (deadlock_detected, serialization_failure, ...) and
        # lock_not_available (lock_timeout); psycopg's classes for these do not
        # share a base class, so the SQLSTATE decides
        return True
    if isinstance(exc, errors.UniqueViolation):
        # another worker linked the same identifier, or applied the same event
        return exc.diag.table_name in _CONFLICT_TABLES
    return False


_UNAVAILABLE = (
    errors.AdminShutdown,
    errors.CrashShutdown,
    errors.CannotConnectNow,
    errors.ConnectionException,
)


def _is_unavailable(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, psycopg.OperationalError) and (
        conn is None or conn.closed or conn.broken
    )


# -------------------------------------------------------------------- array parameters
#
# A batch sends its rows as a few arrays of some thousand elements each. psycopg
# dumps a list element by element through its generic machinery (finding the
# element type, a dumper call per element), a large part of a worker's time in
# a transaction. These lists of one known element type are dumped straight
# into PostgreSQL's binary array format instead.

_I32 = struct.Struct(">i").pack
_ARRAY_HEAD = struct.Struct(">iiIii").pack
_NULL = _I32(-1)


def _array(oid: int, elements: list[bytes | None]) -> bytes:
    """A one-dimensional binary array of already encoded elements (None: NULL)."""
    if not elements:
        return struct.pack(">iiI", 0, 0, oid)
    has_null = None in elements
    body = b"".join([_NULL if e is None else _I32(len(e)) + e for e in elements])
    return _ARRAY_HEAD(1, int(has_null), oid, len(elements), 1) + body


class Texts(list[str | None]):
    """A ``text[]`` parameter."""


class Floats(list[float | None]):
    """A ``float8[]`` parameter."""


class Bigints(list[int | None]):
    """A ``bigint[]`` parameter."""


class Blobs(list[bytes | None]):
    """A ``bytea[]`` parameter."""


class JsonValues(list[Any]):
    """A ``jsonb[]`` parameter: any JSON value, encoded with orjson (None is JSON null)."""


_D8 = struct.Struct(">id").pack
_Q8 = struct.Struct(">iq").pack


class _TextsDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: Any) -> bytes:
        return _array(25, [None if v is None else v.encode() for v in obj])


def _fixed_width(oid: int, pack: Callable[[int, Any], bytes], obj: list[Any]) -> bytes:
    """A binary array of 8-byte numbers: length and value packed in one call per element."""
    if not obj:
        return _array(oid, [])
    if None in obj:
        body = b"".join([_NULL if v is None else pack(8, v) for v in obj])
        return _ARRAY_HEAD(1, 1, oid, len(obj), 1) + body
    return _ARRAY_HEAD(1, 0, oid, len(obj), 1) + b"".join([pack(8, v) for v in obj])


class _FloatsDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1022  # float8[]

    def dump(self, obj: Any) -> bytes:
        return _fixed_width(701, _D8, obj)


class _BigintsDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1016  # int8[]

    def dump(self, obj: Any) -> bytes:
        return _fixed_width(20, _Q8, obj)


class _BlobsDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: Any) -> bytes:
        return _array(17, [None if v is None else bytes(v) for v in obj])


class _JsonValuesDumper(Dumper):
    format = pq.Format.BINARY
    oid = 3807  # jsonb[]

    def dump(self, obj: Any) -> bytes:
        return _array(3802, [b"\x01" + orjson.dumps(v) for v in obj])


def register_array_dumpers(context: Any) -> None:
    """Use the dumpers above for those list types (a connection or an adapters map)."""
    adapters = context.adapters
    adapters.register_dumper(Texts, _TextsDumper)
    adapters.register_dumper(Floats, _FloatsDumper)
    adapters.register_dumper(Bigints, _BigintsDumper)
    adapters.register_dumper(Blobs, _BlobsDumper)
    adapters.register_dumper(JsonValues, _JsonValuesDumper)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per pooled connection: READ COMMITTED whatever the server's default, orjson for jsonb.

    Looking identifiers up again after locking only works if each statement
    sees the latest commits; the default json module is much slower than orjson.
    """
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    set_json_dumps(orjson.dumps, conn)
    set_json_loads(orjson.loads, conn)
    register_array_dumpers(conn)


# --------------------------------------------------------------------------- transaction


class PostgresTx(StoreTx):
    """One transaction on one pooled connection, in pipeline mode.

    Reads are sent at once and wait for their answer; writes are kept here and
    sent by :meth:`flush`, which the store calls before commit. Every cache in
    here is only trusted for rows this transaction holds locks on (or created).
    """

    single_writer = False

    def __init__(self, conn: psycopg.Connection[Any], namespace: bytes) -> None:
        self.conn = conn
        self._ns = namespace
        self._w = conn.cursor()
        """Cursor for statements whose results nobody reads (queued in the pipeline)."""
        self._r = conn.cursor(binary=True)
        self._locked_keys: set[int] = set()
        self._locked_profiles: set[str] = set()
        self._known: dict[Identifier, str | None] = {}
        """Identifier -> profile (None: absent), read while this tx held the locks that pin it."""
        self._traits: dict[str, dict[str, Trait]] = {}
        """Traits of profiles this tx has locked: nobody else can change them until commit."""
        # Pending writes, in the order flush() sends them.
        self._new_profiles: dict[str, list[Any]] = {}
        self._links: list[tuple[str, str, str, str, float, str, str]] = []
        self._counts: dict[str, list[Any]] = {}
        self._trait_deletes: set[str] = set()
        self._trait_puts: dict[tuple[str, str], Trait] = {}
        self._timeline: list[tuple[str, float, str, str, str, float, bytes]] = []
        self._applied: dict[str, float] = {}
        self._outbox: list[tuple[str, str, str, bytes]] = []
        self._merges: list[tuple[str, list[str], str, float, str]] = []

    # -- reads

    def _fetch(self, query: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._r.execute(query, params)
        return self._r.fetchall()

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        uids = list(dict.fromkeys(event_uids))
        found = {uid for uid in uids if uid in self._applied}
        rest = [uid for uid in uids if uid not in found]
        if rest:
            rows = self._fetch(
                "SELECT event_uid FROM applied WHERE event_uid = ANY(%b::text[])", [Texts(rest)]
            )
            found.update(r[0] for r in rows)
        return found

    def lookup(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        out: dict[Identifier, str] = {}
        ask: list[Identifier] = []
        for ident in dict.fromkeys(identifiers):
            if ident in self._known:
                pid = self._known[ident]
                if pid is not None:
                    out[ident] = pid
            else:
                ask.append(ident)
        if not ask:
            return out
        self._flush_merges()
        rows = self._fetch(
            "SELECT i.type, i.value, i.profile_id "
            "FROM unnest(%b::text[], %b::text[]) AS q(type, value) "
            "JOIN identities i ON i.type = q.type AND i.value = q.value",
            [Texts([t for t, _ in ask]), Texts([v for _, v in ask])],
        )
        found = {(t, v): p for t, v, p in rows}
        out.update(found)
        for ident in ask:
            pid = found.get(ident)
            # Trust the answer for the rest of the transaction only if nobody
            # else can change it: the identifier is locked (so nobody links it)
            # and its profile is locked (so nobody merges it away). The lookup
            # was sent after those locks, so it saw every earlier commit.
            if self._key_of(ident) in self._locked_keys and (
                pid is None or pid in self._locked_profiles
            ):
                self._known[ident] = pid
        return out

    def identifiers_of(self, profile_ids: Iterable[str]) -> dict[str, list[Identifier]]:
        ids = list(dict.fromkeys(profile_ids))
        out: dict[str, list[Identifier]] = {pid: [] for pid in ids}
        if not ids:
            return out
        self._flush_links()
        self._flush_merges()
        for pid, type_, value in self._fetch(
            "SELECT profile_id, type, value FROM identities WHERE profile_id = ANY(%b::text[])",
            [Texts(ids)],
        ):
            out[pid].append((type_, value))
        return out

    def traits(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Trait]]:
        ids = list(dict.fromkeys(profile_ids))
        out: dict[str, dict[str, Trait]] = {}
        ask: list[str] = []
        for pid in ids:
            cached = self._traits.get(pid)
            if cached is not None:
                out[pid] = dict(cached)
            else:
                ask.append(pid)
        if ask:
            self._flush_traits()
            fetched: dict[str, dict[str, Trait]] = {pid: {} for pid in ask}
            for pid, name, value, source, t, prio, uid in self._fetch(
                "SELECT profile_id, name, value, source, time, priority, event_uid "
                "FROM traits WHERE profile_id = ANY(%b::text[])",
                [Texts(ask)],
            ):
                fetched[pid][name] = Trait(value, source, t, prio, uid)
            for pid, got in fetched.items():
                if pid in self._locked_profiles:
                    self._traits[pid] = got
                out[pid] = dict(got)
        return {pid: out[pid] for pid in ids}

    # -- locks

    def _key_of(self, ident: Identifier) -> int:
        return _key(self._ns, ident[0], ident[1])

    def lock_identifiers(self, identifiers: Sequence[Identifier]) -> None:
        """Advisory locks, sorted by key, held until the transaction ends.

        Sorted so that two transactions locking overlapping sets cannot
        deadlock; keys already held by this transaction are not asked again.
        ``unnest`` yields the array in order, so the locks are taken in order.
        """
        keys = sorted({self._key_of(i) for i in identifiers} - self._locked_keys)
        if not keys:
            return
        self._w.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) AS k",
                        [Bigints(keys)])
        self._locked_keys.update(keys)

    def lock_profiles(self, profile_ids: Sequence[str]) -> None:
        ids = sorted(set(profile_ids) - self._locked_profiles)
        if not ids:
            return
        self._w.execute(
            "SELECT 1 FROM profiles WHERE id = ANY(%b::text[]) ORDER BY id FOR UPDATE",
            [Texts(ids)],
        )
        self._locked_profiles.update(ids)

    # -- writes (kept until flush)

    def mark_applied(self, event_uids: Sequence[str], at: float) -> None:
        for uid in event_uids:
            if uid in self._applied:
                raise ValueError(f"event {uid} marked applied twice in one transaction")
            self._applied[uid] = at

    def create_profile(self, profile_id: str, at: float) -> None:
        if profile_id in self._new_profiles:
            raise ValueError(f"profile {profile_id} created twice in one transaction")
        self._new_profiles[profile_id] = [at, at, 0]
        # Invisible to everyone else until commit, so as good as locked.
        self._locked_profiles.add(profile_id)
        self._traits[profile_id] = {}

    def link(
        self,
        profile_id: str,
        identifiers: Sequence[Identifier],
        event_uid: str,
        at: float,
        source: str,
        reason: str = "deterministic",
    ) -> None:
        for type_, value in identifiers:
            self._links.append((type_, value, profile_id, event_uid, at, source, reason))
            # Ours until commit: another insert of it fails on the primary key.
            self._known[(type_, value)] = profile_id

    def merge(
        self, into: str, merged: Sequence[str], event_uid: str, at: float, reason: str
    ) -> None:
        """Move everything of ``merged`` to ``into`` by profile id, under the caller's locks.

        Kept until :meth:`flush` like the other writes (or until a read that
        depends on it), where all of a transaction's merges go in the same seven
        statements: a batch often merges a dozen times, and seven statements
        (and an early flush) each time were most of a batch's statements.
        """
        gone = [pid for pid in dict.fromkeys(merged) if pid != into]
        if not gone:
            return
        self._merges.append((into, gone, event_uid, at, reason))
        moved = set(gone)
        for ident, pid in self._known.items():
            if pid in moved:
                self._known[ident] = into

    def _flush_merges(self) -> None:
        """Send the pending merges, with everything they move written first.

        The same end state as merging one after the other: a profile merged
        into one that is merged later in the transaction ends in the last one,
        with its merge record, and so do the profiles and records that pointed
        at either.
        """
        if not self._merges:
            return
        self._flush_links()
        self._flush_counts()
        self._flush_timeline()
        final: dict[str, str] = {}  # merged profile -> the profile it ends in
        records: list[list[Any]] = []
        for into, gone, event_uid, at, reason in self._merges:
            into = final.get(into, into)
            for pid in gone:
                if pid == into:
                    continue
                for earlier, target in final.items():
                    if target == pid:
                        final[earlier] = into
                final[pid] = into
                records.append([into, pid, event_uid, at, reason])
        at = max(m[3] for m in self._merges)
        self._merges = []
        for record in records:
            record[0] = final.get(record[0], record[0])
        # ``x = ANY(gone)`` beside the join lets the planner use the indexes, where
        # the join alone made it scan whole tables
        mapping = [Texts(final), Texts(final.values()), Texts(final)]
        moves = "unnest(%b::text[], %b::text[]) AS m(gone, survivor)"
        w = self._w
        w.execute(
            f"UPDATE identities SET profile_id = m.survivor FROM {moves} "
            "WHERE identities.profile_id = m.gone AND identities.profile_id = ANY(%b::text[])",
            mapping,
        )
        w.execute(
            f"UPDATE timeline SET profile_id = m.survivor FROM {moves} "
            "WHERE timeline.profile_id = m.gone AND timeline.profile_id = ANY(%b::text[])",
            mapping,
        )
        w.execute(
            f"UPDATE profiles SET merged_into = m.survivor FROM {moves} "
            "WHERE profiles.merged_into = m.gone AND profiles.merged_into = ANY(%b::text[])",
            mapping,
        )
        w.execute(
            "UPDATE profiles SET event_count = profiles.event_count + s.n, "
            "created_at = least(profiles.created_at, s.created), updated_at = %s "
            "FROM (SELECT m.survivor, coalesce(sum(p.event_count), 0) AS n, "
            f"      min(p.created_at) AS created FROM {moves} "
            "      JOIN profiles p ON p.id = m.gone GROUP BY m.survivor) AS s "
            "WHERE profiles.id = s.survivor",
            [at, *mapping[:2]],
        )
        w.execute(
            f"UPDATE profiles SET merged_into = m.survivor, event_count = 0, updated_at = %s "
            f"FROM {moves} WHERE profiles.id = m.gone AND profiles.id = ANY(%b::text[])",
            [at, *mapping],
        )
        w.execute(
            f"UPDATE merges SET into_id = m.survivor FROM {moves} "
            "WHERE merges.into_id = m.gone AND merges.into_id = ANY(%b::text[])",
            mapping,
        )
        cols = list(zip(*records, strict=True))
        w.execute(
            "INSERT INTO merges (into_id, merged_id, event_uid, at, reason) "
            "SELECT i, g, e, a, r FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[], "
            "%b::text[]) WITH ORDINALITY AS u(i, g, e, a, r, n) ORDER BY n",
            [Texts(cols[0]), Texts(cols[1]), Texts(cols[2]), Floats(cols[3]), Texts(cols[4])],
        )

    def split(
        self,
        profile_id: str,
        into_id: str,
        identifiers: Sequence[Identifier],
        event_uids: Sequence[str],
        at: float,
    ) -> None:
        """Undo part of a merge (identity unmerge): see :meth:`StoreTx.split`."""
        self.flush()
        w = self._w
        row = w.execute("SELECT merged_into FROM profiles WHERE id = %s FOR UPDATE",
                        [into_id]).fetchone()
        if row is None:
            w.execute("INSERT INTO profiles (id, created_at, updated_at, event_count) "
                      "VALUES (%s, %s, %s, 0)", [into_id, at, at])
        else:
            w.execute("UPDATE profiles SET merged_into = NULL, updated_at = %s WHERE id = %s",
                      [at, into_id])
            w.execute("DELETE FROM merges WHERE merged_id = %s", [into_id])
        if identifiers:
            w.execute(
                "UPDATE identities SET profile_id = %s FROM unnest(%b::text[], %b::text[]) "
                "AS moved(type, value) WHERE identities.type = moved.type "
                "AND identities.value = moved.value AND identities.profile_id = %s",
                [into_id, [t for t, _ in identifiers], [v for _, v in identifiers], profile_id],
            )
        if event_uids:
            w.execute(
                "UPDATE timeline SET profile_id = %s "
                "WHERE profile_id = %s AND event_uid = ANY(%b::text[])",
                [into_id, profile_id, list(event_uids)],
            )
        w.execute(
            "UPDATE profiles SET event_count = (SELECT count(*) FROM timeline t "
            "WHERE t.profile_id = profiles.id), updated_at = %s WHERE id = ANY(%b::text[])",
            [at, [profile_id, into_id]],
        )
        for ident in identifiers:
            if self._known.get(ident) == profile_id:
                self._known[ident] = into_id
        self._locked_profiles.add(into_id)

    def replace_events(self, profile_id: str, events: dict[str, dict[str, Any]]) -> int:
        """See :meth:`StoreTx.replace_events`; pending writes go first, so new entries count."""
        if not events:
            return 0
        self.flush()
        uids = list(events)
        rows = self._fetch(
            "UPDATE timeline SET event = r.event FROM unnest(%b::text[], %b::bytea[]) "
            "AS r(uid, event) WHERE timeline.profile_id = %b AND timeline.event_uid = r.uid "
            "RETURNING timeline.event_uid",
            [uids, [orjson.dumps(events[u]) for u in uids], profile_id],
        )
        return len(rows)

    def put_traits(self, profile_id: str, traits: dict[str, Trait]) -> None:
        cached = self._traits.get(profile_id)
        for name, trait in traits.items():
            self._trait_puts[(profile_id, name)] = trait
            if cached is not None:
                cached[name] = trait

    def delete_traits(self, profile_ids: Sequence[str]) -> None:
        doomed = set(profile_ids)
        if not doomed:
            return
        self._trait_puts = {k: t for k, t in self._trait_puts.items() if k[0] not in doomed}
        self._trait_deletes |= doomed
        for pid in doomed:
            if pid in self._traits:
                self._traits[pid] = {}

    def append_timeline(self, profile_id: str, entries: Sequence[TimelineEntry], at: float) -> None:
        for e in entries:
            self._timeline.append(
                (
                    profile_id,
                    e.time,
                    e.event_uid,
                    e.type,
                    e.source,
                    e.received_at,
                    orjson.dumps(e.event),
                )
            )
        created = self._new_profiles.get(profile_id)
        if created is not None:
            created[1] = at
            created[2] += len(entries)
            return
        pending = self._counts.setdefault(profile_id, [0, at])
        pending[0] += len(entries)
        pending[1] = at

    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        self._outbox.extend(messages)

    # -- sending the pending writes

    def _flush_links(self) -> None:
        if self._new_profiles:
            ids = list(self._new_profiles)
            rows = list(self._new_profiles.values())
            self._w.execute(
                "INSERT INTO profiles (id, created_at, updated_at, event_count) "
                "SELECT * FROM unnest(%b::text[], %b::float8[], %b::float8[], %b::bigint[])",
                [Texts(ids), Floats([r[0] for r in rows]), Floats([r[1] for r in rows]),
                 Bigints([r[2] for r in rows])],
            )
            self._new_profiles = {}
        if self._links:
            cols = list(zip(*self._links, strict=True))
            self._w.execute(
                "INSERT INTO identities (type, value, profile_id, event_uid, linked_at, source, "
                "reason) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
                "%b::float8[], %b::text[], %b::text[])",
                [Texts(c) if i != 4 else Floats(c) for i, c in enumerate(cols)],
            )
            self._links = []

    def _flush_traits(self) -> None:
        if self._trait_deletes:
            self._w.execute(
                "DELETE FROM traits WHERE profile_id = ANY(%b::text[])",
                [Texts(sorted(self._trait_deletes))],
            )
            self._trait_deletes = set()
        if self._trait_puts:
            keys = list(self._trait_puts)
            vals = list(self._trait_puts.values())
            self._w.execute(
                "INSERT INTO traits (profile_id, name, value, source, time, priority, event_uid) "
                "SELECT * FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::text[], "
                "%b::float8[], %b::int[], %b::text[]) "
                "ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, "
                "source = excluded.source, time = excluded.time, "
                "priority = excluded.priority, event_uid = excluded.event_uid",
                [
                    Texts([k[0] for k in keys]),
                    Texts([k[1] for k in keys]),
                    JsonValues([t.value for t in vals]),
                    Texts([t.source for t in vals]),
                    Floats([t.time for t in vals]),
                    [t.priority for t in vals],
                    Texts([t.event_uid for t in vals]),
                ],
            )
            self._trait_puts = {}

    def _flush_counts(self) -> None:
        w = self._w
        if self._counts:
            ids = sorted(self._counts)
            w.execute(
                "UPDATE profiles SET event_count = profiles.event_count + d.n, "
                "updated_at = d.at "
                "FROM unnest(%b::text[], %b::bigint[], %b::float8[]) AS d(id, n, at) "
                "WHERE profiles.id = d.id",
                [Texts(ids), Bigints([self._counts[i][0] for i in ids]),
                 Floats([self._counts[i][1] for i in ids])],
            )
            self._counts = {}

    def _flush_timeline(self) -> None:
        w = self._w
        if self._timeline:
            cols = list(zip(*self._timeline, strict=True))
            w.execute(
                "INSERT INTO timeline (profile_id, time, event_uid, type, source, received_at, "
                "event) SELECT * FROM unnest(%b::text[], %b::float8[], %b::text[], %b::text[], "
                "%b::text[], %b::float8[], %b::bytea[]) ON CONFLICT DO NOTHING",
                [Texts(cols[0]), Floats(cols[1]), Texts(cols[2]), Texts(cols[3]), Texts(cols[4]),
                 Floats(cols[5]), Blobs(cols[6])],
            )
            self._timeline = []

    def flush(self) -> None:
        """Queue every pending write in the pipeline (in dependency order).

        The applied records go first: when another worker applied one of these
        events meanwhile, its primary key fails here, a :class:`Conflict` the
        caller retries, before the timeline or a merge trips over the same event.
        """
        w = self._w
        if self._applied:
            w.execute(
                "INSERT INTO applied (event_uid, at) "
                "SELECT * FROM unnest(%b::text[], %b::float8[])",
                [Texts(self._applied), Floats(self._applied.values())],
            )
            self._applied = {}
        self._flush_links()
        self._flush_counts()
        self._flush_timeline()
        self._flush_merges()
        self._flush_traits()
        if self._outbox:
            cols = list(zip(*self._outbox, strict=True))
            w.execute(
                "INSERT INTO outbox (topic, message_id, key, payload) "
                "SELECT t, m, k, p FROM unnest(%b::text[], %b::text[], %b::text[], %b::bytea[]) "
                "WITH ORDINALITY AS u(t, m, k, p, n) ORDER BY n",
                [Texts(cols[0]), Texts(cols[1]), Texts(cols[2]), Blobs(cols[3])],
            )
            self._outbox = []


# --------------------------------------------------------------------------- store


class PostgresStore(Store):
    """Profiles in PostgreSQL for several concurrent processors (see the module docstring).

    ``url`` is a libpq URL; Tessera's own options (``schema``, ``pool_min_size``,
    ``pool_max_size``, ``pool_timeout``, ``auto_migrate``) may be in its query
    string or given as keyword ``options``.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.conninfo, self.settings = parse_url(url, options)
        self.schema = self.settings.schema
        self._ns = self.schema.encode()
        self._lock = threading.Lock()
        self._migrated = not self.settings.auto_migrate
        self._closed = False
        self._pool = ConnectionPool(
            self.conninfo,
            kwargs={"autocommit": True},
            min_size=self.settings.pool_min_size,
            max_size=max(self.settings.pool_max_size, self.settings.pool_min_size),
            timeout=self.settings.pool_timeout,
            configure=_configure,
            # Give up a failing reconnection early: a connection is then asked
            # for afresh on the next request, so once the server is back the
            # pool recovers within seconds rather than after a long backoff.
            reconnect_timeout=RECONNECT_TIMEOUT,
            name=f"tessera-{self.schema}",
            open=False,
        )
        self._opened = False

    # -- lifecycle

    def _describe(self) -> str:
        info = urlsplit(self.conninfo)
        return f"PostgreSQL at {info.hostname or 'localhost'}:{info.port or 5432}{info.path}"

    def _ensure_ready(self) -> None:
        if self._opened and self._migrated:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if not self._opened:
                # wait=False: a server that is down now must not block the
                # constructor; callers wait (bounded) when they need a connection.
                self._pool.open(wait=False)
                self._opened = True
            if not self._migrated:
                self._migrate(MIGRATIONS)

    def migrate(self) -> None:
        """Create the schema or bring it up to date (idempotent; safe from many processes)."""
        with self._lock:
            self._migrate(MIGRATIONS)

    def applied_migrations(self) -> list[int]:
        """The versions recorded in ``schema_migrations``, ascending."""
        with self._connection() as conn:
            return [
                r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            ]

    def _migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the missing steps, each in its own transaction; return their versions.

        A session advisory lock serializes concurrent migrators (several
        workers starting at once): the second one waits, then finds every
        step recorded and does nothing. A dedicated connection is used so the
        session lock never leaks into the pool.
        """
        done: list[int] = []
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to {self._describe()}: {exc}") from exc
        with conn:
            key = _key(self._ns, "tessera.migrate")
            conn.execute("SELECT pg_advisory_lock(%s)", [key])
            try:
                create_schema(conn, self.schema)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                have = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                for step in sorted(migrations, key=lambda m: m.version):
                    if step.version in have:
                        continue
                    with conn.transaction():
                        conn.execute(step.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            [step.version, step.name],
                        )
                    log.info(
                        "applied migration %s (%s) in schema %s",
                        step.version,
                        step.name,
                        self.schema,
                    )
                    done.append(step.version)
                newer = sorted(v for v in have if v not in {m.version for m in migrations})
                if newer:
                    log.warning(
                        "schema %s has migrations this release does not know: %s",
                        self.schema,
                        newer,
                    )
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [key])
        self._migrated = True
        return done

    def close(self) -> None:
        with self._lock:
            if self._opened and not self._closed:
                self._pool.close()
            self._closed = True
            self._opened = False

    # -- connections

    def _checkout(self) -> psycopg.Connection[Any]:
        """A pooled connection that answered an empty query just now.

        After a server restart the pool still holds connections to the old
        server. Each fails its ping at once and goes back to the pool, which
        drops it and opens a replacement; the next one is tried right away.
        (psycopg_pool's own ``check`` would sleep a growing backoff after each
        failure, which with a full pool of dead connections can exceed the
        timeout although the server is up again.)
        """
        deadline = time.monotonic() + self.settings.pool_timeout
        while True:
            try:
                conn = self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
            except PoolTimeout as exc:
                raise StoreUnavailable(
                    f"{self._describe()}: no working connection within "
                    f"{self.settings.pool_timeout:g}s; is the server up? ({exc})"
                ) from exc
            try:
                conn.execute("")
            except psycopg.Error:
                self._pool.putconn(conn)
                continue
            return conn

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, with the failure modes turned into the store's exceptions."""
        self._ensure_ready()
        conn = self._checkout()
        try:
            yield conn
        except psycopg.Error as exc:
            if _is_unavailable(exc, conn):
                raise StoreUnavailable(f"{self._describe()}: connection lost: {exc}") from exc
            raise
        finally:
            # a broken connection is discarded and replaced by the pool
            self._pool.putconn(conn)

    @contextmanager
    def transaction(self) -> Iterator[StoreTx]:
        """One pooled connection, one pipeline, one READ COMMITTED transaction.

        Pending writes are flushed before the commit; an error on any of them
        surfaces here, translated to :class:`Conflict` when a retry can succeed.
        """
        with self._connection() as conn:
            try:
                # The transaction outside the pipeline: the pipeline's exit sends
                # and checks everything, so a failed statement surfaces there as
                # an ordinary exception and the rollback runs outside pipeline mode.
                with conn.transaction(), conn.pipeline() as pipeline:
                    try:
                        tx = PostgresTx(conn, self._ns)
                        yield tx
                        tx.flush()
                    except BaseException:
                        # Drain what is still in flight before the exception
                        # leaves the pipeline, or psycopg logs the aborted rest.
                        with suppress(psycopg.Error):
                            pipeline.sync()
                        raise
            except psycopg.Error as exc:
                if _is_conflict(exc):
                    raise Conflict(f"concurrent transaction won: {exc}") from exc
                raise

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection[Any]]:
        """A read-only transaction on one snapshot, so a multi-query read is consistent."""
        with self._connection() as conn, conn.pipeline(), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    # -- reads

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        if not event_uids:
            return set()
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT event_uid FROM applied WHERE event_uid = ANY(%s)", [list(event_uids)]
            ).fetchall()
        return {str(r[0]) for r in rows}

    def resolve(self, identifier: str) -> str | None:
        type_, sep, value = identifier.partition(":")
        with self._connection() as conn:
            if sep:
                row = conn.execute(
                    "SELECT profile_id FROM identities WHERE type = %s AND value = %s",
                    [type_, value],
                ).fetchone()
                return None if row is None else str(row[0])
            # merge() redirects earlier merges, so one hop reaches the survivor
            row = conn.execute(
                "SELECT coalesce(merged_into, id) FROM profiles WHERE id = %s", [identifier]
            ).fetchone()
            return None if row is None else str(row[0])

    def get_profile(self, profile_id: str) -> Profile | None:
        with self._snapshot() as conn:
            c_profile = conn.cursor(binary=True).execute(
                "SELECT id, created_at, updated_at, event_count FROM profiles "
                "WHERE id = %s AND merged_into IS NULL",
                [profile_id],
            )
            c_traits = conn.cursor(binary=True).execute(
                "SELECT name, value, source, time, priority, event_uid FROM traits "
                "WHERE profile_id = %s ORDER BY name",
                [profile_id],
            )
            c_links = conn.cursor(binary=True).execute(
                "SELECT type, value, profile_id, event_uid, linked_at, source, reason "
                "FROM identities WHERE profile_id = %s ORDER BY linked_at, type, value",
                [profile_id],
            )
            c_merges = conn.cursor(binary=True).execute(
                "SELECT into_id, merged_id, event_uid, at, reason FROM merges "
                "WHERE into_id = %s ORDER BY at, id",
                [profile_id],
            )
            row = c_profile.fetchone()
            traits = c_traits.fetchall()
            links = c_links.fetchall()
            merges = c_merges.fetchall()
        if row is None:
            return None
        profile = Profile(id=row[0], created_at=row[1], updated_at=row[2], event_count=row[3])
        for name, value, source, t, prio, uid in traits:
            profile.traits[name] = Trait(value, source, t, prio, uid)
        profile.identities = [IdentityLink(*r) for r in links]
        profile.merged_from = [MergeRecord(*r) for r in merges]
        return profile

    def timeline(
        self, profile_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[TimelineEntry]:
        query = (
            "SELECT event_uid, type, source, time, received_at, event FROM timeline "
            "WHERE profile_id = %s"
        )
        params: list[Any] = [profile_id]
        if before is not None:
            # a row comparison, so the primary key index serves the page directly
            query += " AND (time, event_uid) < (%s, %s)"
            params += [before[0], before[1]]
        query += " ORDER BY time DESC, event_uid DESC LIMIT %s"
        params.append(limit)
        with self._connection() as conn:
            rows = conn.cursor(binary=True).execute(query, params).fetchall()
        return [
            TimelineEntry(uid, type_, src, t, rcv, orjson.loads(ev))
            for uid, type_, src, t, rcv, ev in rows
        ]

    def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        with self._connection() as conn:
            rows = (
                conn.cursor(binary=True)
                .execute(
                    "SELECT id, topic, message_id, key, payload FROM outbox ORDER BY id LIMIT %s",
                    [limit],
                )
                .fetchall()
            )
        return [OutboxMessage(i, t, m, k, bytes(p)) for i, t, m, k, p in rows]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._connection() as conn:
            conn.execute("DELETE FROM outbox WHERE id = ANY(%b::bigint[])", [list(ids)])

    def counts(self) -> dict[str, int]:
        with self._connection() as conn:  # one statement: one snapshot
            row = conn.execute(
                "SELECT (SELECT count(*) FROM profiles WHERE merged_into IS NULL),"
                " (SELECT count(*) FROM identities),"
                " (SELECT count(*) FROM applied),"
                " (SELECT count(*) FROM merges)"
            ).fetchone()
        assert row is not None
        return dict(
            zip(("profiles", "identities", "events_applied", "merges"), map(int, row), strict=True)
        )

    def reset(self) -> None:
        """Empty every projection at once (for a rebuild from the event log).

        TRUNCATE rather than DELETE: constant time, and its exclusive locks
        make a worker still running wait for the rebuild rather than write
        into a half-emptied store.
        """
        with self._connection() as conn, conn.transaction():
            conn.execute("TRUNCATE profiles, identities, traits, timeline, merges, applied, outbox")

    def iter_profile_ids(self) -> Iterator[str]:
        """Live profile ids in order, a page at a time (no connection held between pages)."""
        after = ""
        while True:
            with self._connection() as conn:
                page = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM profiles WHERE merged_into IS NULL AND id > %s "
                        "ORDER BY id LIMIT 1000",
                        [after],
                    )
                ]
            yield from page
            if len(page) < 1000:
                return
            after = page[-1]

    def trait_values(self, names: Sequence[str], page: int = 5000
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A page of live profiles per query (keyset on the id), each with its wanted traits
        in the same statement; no connection held between pages."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        after = ""
        while True:
            with self._connection() as conn:
                rows = conn.cursor(binary=True).execute(
                    "WITH page AS (SELECT id FROM profiles WHERE merged_into IS NULL "
                    "AND id > %s ORDER BY id LIMIT %s) "
                    "SELECT page.id, t.name, t.value FROM page LEFT JOIN traits t "
                    "ON t.profile_id = page.id AND t.name = ANY(%s) ORDER BY page.id",
                    [after, page, wanted]).fetchall()
            current: str | None = None
            values: dict[str, Any] = {}
            seen = 0
            for pid, name, value in rows:
                if pid != current:
                    if values:
                        yield str(current), values
                    current, values = pid, {}
                    seen += 1
                if name is not None:
                    values[name] = value
            if values:
                yield str(current), values
            if seen < page or current is None:
                return
            after = current

    def changed_profiles(self, since: float) -> list[str]:
        with self._connection() as conn:
            return [str(r[0]) for r in conn.execute(
                "SELECT id FROM profiles WHERE updated_at > %s ORDER BY id", [since])]

    def timeline_uids(self, profile_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {pid: [] for pid in profile_ids}
        with self._connection() as conn:
            for pid, uid in conn.execute(
                    "SELECT profile_id, event_uid FROM timeline WHERE profile_id = ANY(%s) "
                    "ORDER BY profile_id, time DESC, event_uid DESC", [list(profile_ids)]):
                out[pid].append(uid)
        return out

    def timeline_entries(self, profile_id: str, event_uids: Sequence[str]) -> list[TimelineEntry]:
        with self._connection() as conn:
            rows = conn.cursor(binary=True).execute(
                "SELECT event_uid, type, source, time, received_at, event FROM timeline "
                "WHERE profile_id = %s AND event_uid = ANY(%s) "
                "ORDER BY time DESC, event_uid DESC", [profile_id, list(event_uids)]).fetchall()
        return [TimelineEntry(uid, type_, src, t, rcv, orjson.loads(ev))
                for uid, type_, src, t, rcv, ev in rows]

    def erase(self, profile_id: str, anonymize: bool = False) -> Erased:
        """One transaction holding the profile's row lock, as a processor's merge does.

        PostgreSQL keeps deleted row versions in its data files until VACUUM
        reuses their space, and in its write-ahead log until that is recycled;
        this runs a plain VACUUM of the touched tables afterwards, which
        prunes the dead versions from the pages (see docs/privacy.md for what
        remains in the WAL and in backups).
        """
        with self._connection() as conn:
            with conn.transaction():
                live = conn.execute(
                    "SELECT 1 FROM profiles WHERE id=%s AND merged_into IS NULL FOR UPDATE",
                    [profile_id]).fetchone()
                if live is None:
                    return Erased([], [], [])
                pids = [profile_id] + [r[0] for r in conn.execute(
                    "SELECT id FROM profiles WHERE merged_into=%s ORDER BY id FOR UPDATE",
                    [profile_id])]
                identifiers: list[Identifier] = [(t, v) for t, v in conn.execute(
                    "SELECT type, value FROM identities WHERE profile_id=%s ORDER BY type, value",
                    [profile_id])]
                uids = [r[0] for r in conn.execute(
                    "SELECT event_uid FROM timeline WHERE profile_id=%s ORDER BY time, event_uid",
                    [profile_id])]
                conn.execute("DELETE FROM identities WHERE profile_id=%s", [profile_id])
                conn.execute("DELETE FROM traits WHERE profile_id = ANY(%s)", [pids])
                for pid in pids:
                    conn.execute("DELETE FROM outbox WHERE key=%s OR position(%s in payload) > 0",
                                 [pid, pid.encode()])
                if anonymize:
                    conn.execute("UPDATE timeline SET event=%s WHERE profile_id=%s",
                                 [b"{}", profile_id])
                else:
                    conn.execute("DELETE FROM timeline WHERE profile_id=%s", [profile_id])
                    conn.execute(
                        "DELETE FROM merges WHERE into_id = ANY(%s) OR merged_id = ANY(%s)",
                        [pids, pids])
                    conn.execute("DELETE FROM profiles WHERE id = ANY(%s)", [pids])
            if conn.autocommit:  # pooled connections are; VACUUM cannot run in a transaction
                with suppress(psycopg.Error):
                    conn.execute("VACUUM identities, traits, timeline, outbox, merges, profiles")
        return Erased(pids, identifiers, uids)


def migrate(url: str, **options: Any) -> list[int]:
    """Bring the schema at ``url`` up to date; the versions applied now (empty: nothing to do).

    For ``tessera migrate``: safe to run while workers are running or starting.
    """
    store = PostgresStore(url, auto_migrate=False, **options)
    try:
        with store._lock:
            return store._migrate(MIGRATIONS)
    finally:
        store.close()
