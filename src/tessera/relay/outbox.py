"""The transactional outbox for services on PostgreSQL, and its relay to Tessera.

A service writes its event into the outbox table **in the same transaction**
as the business change (:func:`add_event`), so the event exists if and only
if the change was committed. The relay (``tessera relay outbox``) publishes
committed rows to Tessera's ingest API in ``seq`` order and marks them
published; it wakes up on ``NOTIFY`` (sent by :func:`add_event` at commit)
and polls as well, so a lost notification only delays. Rows are claimed
with ``FOR UPDATE SKIP LOCKED``, so a second relay never publishes the same
rows at the same time. Delivery is at least once: a relay that crashes after
publishing and before marking publishes the rows again after a restart, with
the same event ids, and Tessera deduplicates them.

Order: rows become visible at commit; among visible rows the relay goes by
``seq``. Two transactions that change the same entity are serialized by the
entity's row lock, so their rows' ``seq`` order is their commit order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from tessera.publish.client import PublishError

log = structlog.get_logger("tessera.relay.outbox")

DEFAULT_TABLE = "tessera_outbox"
DEFAULT_CHANNEL = "tessera_outbox"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    seq          bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    failed_at    timestamptz,
    error        text
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (seq)
    WHERE published_at IS NULL AND failed_at IS NULL;
"""


def table_ident(table: str) -> sql.Composable:
    if not _IDENT.match(table):
        raise ValueError(f"{table!r} is not a table name (schema.table or table)")
    return sql.Identifier(*table.split("."))


def create_outbox(conn: psycopg.Connection[Any], table: str = DEFAULT_TABLE) -> None:
    """Create the outbox table and its index if missing (in the caller's transaction)."""
    index = sql.Identifier(table.split(".")[-1] + "_pending")
    conn.execute(sql.SQL(DDL).format(table=table_ident(table), index=index))


def add_event(conn: psycopg.Connection[Any] | psycopg.Cursor[Any], event: dict[str, Any],
              table: str = DEFAULT_TABLE, channel: str = DEFAULT_CHANNEL) -> None:
    """Write a CloudEvent into the outbox, in the caller's (business) transaction.

    The ``NOTIFY`` is delivered at commit, so the relay wakes up only for
    committed events; a rolled-back transaction leaves neither row nor wake-up.
    An event id already in the outbox is ignored (a retried request is one event).
    """
    conn.execute(
        sql.SQL("INSERT INTO {} (event_id, event) VALUES (%s, %s) "
                "ON CONFLICT (event_id) DO NOTHING").format(table_ident(table)),
        (str(event["id"]), Jsonb(event)))
    conn.execute("SELECT pg_notify(%s, '')", (channel,))


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0
    batches: int = 0


class OutboxRelay:
    def __init__(self, dsn: str, sender: Any, table: str = DEFAULT_TABLE,
                 channel: str = DEFAULT_CHANNEL, batch_size: int = 100,
                 poll_seconds: float = 1.0, retain_seconds: float = 86_400.0) -> None:
        self.dsn = dsn
        self.sender = sender
        self.table = table
        self.ident = table_ident(table)
        self.channel = channel
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.retain_seconds = retain_seconds
        self.stats = RelayStats()
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        return self._conn

    def publish_once(self) -> int:
        """Publish one batch of committed, unpublished rows; how many were published."""
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                sql.SQL("SELECT seq, event FROM {} WHERE published_at IS NULL AND failed_at IS "
                        "NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED").format(self.ident),
                (self.batch_size,)).fetchall()
            if not rows:
                return 0
            seqs = [r[0] for r in rows]
            events = [r[1] for r in rows]
            failed: dict[int, str] = {}
            try:
                self.sender.send_batch(events)
            except PublishError as exc:
                if exc.status != 400 or not exc.errors:
                    raise  # Tessera unavailable, or a key problem: nothing marked, retry later
                # some events are refused for good: set them aside, publish the others
                for err in exc.errors:
                    index = err.get("index", 0)
                    reason = f"{err.get('field')}: {err.get('reason')}"
                    failed[seqs[index]] = failed.get(seqs[index], "") + reason + "; "
                good = [e for s, e in zip(seqs, events, strict=True) if s not in failed]
                if good:
                    self.sender.send_batch(good)
            done = [s for s in seqs if s not in failed]
            conn.execute(sql.SQL("UPDATE {} SET published_at = now() WHERE seq = ANY(%s)")
                         .format(self.ident), (done,))
            for seq, reason in failed.items():
                conn.execute(sql.SQL("UPDATE {} SET failed_at = now(), error = %s WHERE seq = %s")
                             .format(self.ident), (reason.strip("; "), seq))
                log.warning("outbox.event_refused", seq=seq, reason=reason)
        self.stats.published += len(done)
        self.stats.failed += len(failed)
        self.stats.batches += 1
        return len(done) + len(failed)

    def drain(self, max_batches: int = 1_000_000) -> int:
        """Publish until nothing is pending; the number of rows handled."""
        total = 0
        for _ in range(max_batches):
            n = self.publish_once()
            total += n
            if n < self.batch_size:
                break
        return total

    def cleanup(self) -> int:
        conn = self._connection()
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE published_at < now() - %s * interval "
                                   "'1 second'").format(self.ident), (self.retain_seconds,))
        return cur.rowcount

    def run(self, should_stop: Callable[[], bool], max_seconds: float | None = None) -> None:
        """Publish until ``should_stop()``: on each NOTIFY, and every ``poll_seconds``."""
        listen = self._listen = psycopg.connect(self.dsn, autocommit=True)
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        last_cleanup = 0.0
        backoff = self.poll_seconds
        try:
            while not should_stop() and (deadline is None or time.monotonic() < deadline):
                try:
                    handled = self.drain()
                    backoff = self.poll_seconds
                except (PublishError, psycopg.OperationalError) as exc:
                    log.warning("outbox.publish_failed", error=str(exc))
                    if isinstance(exc, psycopg.OperationalError) and self._conn is not None:
                        self._conn.close()
                    backoff = min(backoff * 2, 30.0)
                    time.sleep(backoff)
                    continue
                if time.monotonic() - last_cleanup > 60:
                    self.cleanup()
                    last_cleanup = time.monotonic()
                if handled == 0:
                    for _ in listen.notifies(timeout=self.poll_seconds, stop_after=1):
                        pass
        finally:
            self.close()

    def close(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn = self._listen = None


def pending(dsn: str, table: str = DEFAULT_TABLE) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE published_at IS NULL AND "
                                   "failed_at IS NULL").format(table_ident(table))).fetchone()
    return int(row[0]) if row else 0

