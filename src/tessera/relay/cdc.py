"""Change data capture for PostgreSQL applications that publish nothing themselves.

Logical decoding with the ``wal2json`` output plugin (format version 2)
turns each committed row insert, update and delete of the captured tables
into an entity-change event, in the spirit of Debezium's envelope::

    type    <prefix>.created | .updated | .deleted
    data    {"op": "c"|"u"|"d", "entity": "members", "id": "42",
             "before": {...} | null, "after": {...} | null, "changed": [...],
             "source": {"db", "schema", "table", "lsn", "xid", "ts"}}

``before`` is the whole old row only with ``REPLICA IDENTITY FULL`` on the
table; otherwise it holds the key columns alone.

The relay **peeks** at the slot's changes, publishes them, and only then
advances the slot (``pg_replication_slot_advance``), so a crash in between
means the same changes are read again after a restart. Each event's id is
the change's LSN, so republishing is deduplicated by Tessera: nothing is
lost, nothing is processed twice. The slot's lag (bytes of WAL it holds
back) is reported by :meth:`CdcRelay.lag_bytes` and ``tessera relay cdc --status``;
a slot nobody reads keeps WAL forever, so drop it (``--drop-slot``) when a
relay is retired.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
import structlog

from tessera.publish.envelope import changed_fields

log = structlog.get_logger("tessera.relay.cdc")

ACTIONS = {"I": ("c", "created"), "U": ("u", "updated"), "D": ("d", "deleted")}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Table:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Table:
        schema, _, name = text.rpartition(".")
        schema = schema or "public"
        if not _NAME.match(schema) or not _NAME.match(name):
            raise ValueError(f"{text!r} is not a table name (table or schema.table)")
        return cls(schema, name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class CdcStats:
    published: int = 0
    batches: int = 0


def _row(columns: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if columns is None:
        return None
    return {c["name"]: c.get("value") for c in columns}


def _ts(text: str | None) -> str | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        return None
    return parsed.isoformat().replace("+00:00", "Z")


class CdcRelay:
    def __init__(self, dsn: str, tables: list[str], sender: Any, slot: str = "tessera_cdc",
                 type_prefix: str | None = None, source: str | None = None,
                 entity: str | None = None, batch_size: int = 500,
                 poll_seconds: float = 1.0) -> None:
        if not _NAME.match(slot):
            raise ValueError(f"{slot!r} is not a slot name")
        self.dsn = dsn
        self.tables = [Table.parse(t) for t in tables]
        if not self.tables:
            raise ValueError("give at least one table")
        self.sender = sender
        self.slot = slot
        self.type_prefix = type_prefix
        self.entity = entity
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.stats = CdcStats()
        self._conn: psycopg.Connection[Any] | None = None
        self._db = ""
        self.source = source

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
            row = self._conn.execute("SELECT current_database()").fetchone()
            self._db = str(row[0]) if row else ""
        return self._conn

    def ensure_slot(self) -> bool:
        """Create the replication slot if missing; True if it was created.

        The slot starts at the current WAL position: changes before it are
        not captured (take a snapshot of the table for those).
        """
        conn = self._connection()
        level = conn.execute("SHOW wal_level").fetchone()
        if level is None or level[0] != "logical":
            raise RuntimeError(f"wal_level is {level[0] if level else '?'}, not logical: "
                               f"set wal_level = logical and restart PostgreSQL")
        found = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s",
                             (self.slot,)).fetchone()
        if found is not None:
            if found[0] != "wal2json":
                raise RuntimeError(f"slot {self.slot!r} uses {found[0]}, not wal2json")
            return False
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (self.slot,))
        return True

    def drop_slot(self) -> None:
        conn = self._connection()
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s", (self.slot,))

    def lag_bytes(self) -> int:
        """WAL bytes between the server's position and what the relay has confirmed."""
        conn = self._connection()
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) "
            "FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
        if row is None:
            raise RuntimeError(f"no replication slot {self.slot!r}")
        return int(row[0] or 0)

    def _event(self, change: dict[str, Any], xid: str) -> dict[str, Any] | None:
        action = change.get("action")
        if action not in ACTIONS:
            return None
        op, verb = ACTIONS[action]
        table = f"{change['schema']}.{change['table']}"
        after = _row(change.get("columns")) if action != "D" else None
        before = _row(change.get("identity")) if action != "I" else None
        keys = [k["name"] for k in change.get("pk") or []]
        row = after if after is not None else before or {}
        entity_id = "/".join(str(row.get(k)) for k in keys) if keys else change["lsn"]
        prefix = self.type_prefix or f"cdc.{self._db}.{table}"
        source = self.source or f"cdc/{self._db}/{table}"
        return {
            "specversion": "1.0",
            "id": f"{change['lsn']}/{table}",
            "source": source,
            "type": f"{prefix}.{verb}",
            "time": _ts(change.get("timestamp")) or None,
            "subject": f"{change['table']}/{entity_id}",
            "datacontenttype": "application/json",
            "data": {
                "op": op,
                "entity": self.entity or change["table"],
                "id": entity_id,
                "before": before,
                "after": after,
                "changed": changed_fields(before, after) if action == "U" else
                           sorted((after or before or {}).keys()),
                "source": {"db": self._db, "schema": change["schema"], "table": change["table"],
                           "lsn": change["lsn"], "xid": xid, "ts": _ts(change.get("timestamp"))},
            },
        }

    def publish_once(self) -> int:
        """Read up to ``batch_size`` changes (whole transactions), publish, advance the slot."""
        conn = self._connection()
        end = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert end is not None
        rows = conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, "
            "%s, 'format-version', '2', 'include-pk', '1', 'include-lsn', '1', "
            "'include-timestamp', '1', 'include-transaction', '1', 'add-tables', %s)",
            (self.slot, end[0], self.batch_size,
             ",".join(t.qualified for t in self.tables))).fetchall()
        events = []
        for _lsn, xid, data in rows:
            event = self._event(orjson.loads(data), xid)
            if event is not None:
                if event["time"] is None:
                    del event["time"]
                events.append(event)
        for start in range(0, len(events), 500):
            self.sender.send_batch(events[start:start + 500])
        # everything up to ``end`` was decoded unless the batch limit cut it short
        upto = rows[-1][0] if rows and len(rows) >= self.batch_size else end[0]
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, upto))
        self.stats.published += len(events)
        self.stats.batches += 1
        return len(events)

    def drain(self, max_batches: int = 100_000) -> int:
        total = 0
        for _ in range(max_batches):
            n = self.publish_once()
            total += n
            if n == 0:
                break
        return total

    def run(self, should_stop: Callable[[], bool], max_seconds: float | None = None,
            on_lag: Callable[[int], None] | None = None) -> None:
        self.ensure_slot()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = self.poll_seconds
        try:
            while not should_stop() and (deadline is None or time.monotonic() < deadline):
                try:
                    n = self.drain()
                    if on_lag is not None:
                        on_lag(self.lag_bytes())
                    backoff = self.poll_seconds
                except Exception as exc:  # Tessera or PostgreSQL away: retry, never skip
                    log.warning("cdc.publish_failed", error=str(exc))
                    if isinstance(exc, psycopg.OperationalError):
                        self.close()
                    backoff = min(backoff * 2, 30.0)
                    time.sleep(backoff)
                    continue
                if n == 0:
                    time.sleep(self.poll_seconds)
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
