"""The embedded bus: an append-only log in a SQLite file (WAL), zero setup.

One writer thread takes every publish and commits them in groups ("group
commit"): a request's events are answered only after the transaction that
holds them has committed, yet many concurrent requests share one commit. With
``synchronous=FULL`` a committed event survives both a killed process and a
power loss. Each consumer group keeps its committed offset in the same file.

The log keeps one total order per topic, so ordering per partition key holds
trivially. One consumer per group reads at a time (a lease in the file makes a
second one wait); scaling out to many workers is the NATS JetStream backend's job.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from tessera import sqlitefile
from tessera.bus.base import Bus, BusUnavailable, DeadLetter, Delivery, Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    appended_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS log_topic_msg_id ON log (topic, msg_id);
CREATE INDEX IF NOT EXISTS log_topic_seq ON log (topic, seq);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (grp, topic)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    replay_requested_at REAL,
    replayed_at REAL
);
"""

LEASE_SECONDS = 10.0
IDLE_RECHECK_SECONDS = 0.25
REPLAY_ACK_WAIT_SECONDS = 60.0
"""A replayed dead letter handed out and neither acknowledged nor refused by then is
handed out again (the consumer that had it is presumed gone)."""


connect = sqlitefile.connect


class _Consumer:
    """In-memory cursor of one (topic, group) consumer in this process."""

    def __init__(self) -> None:
        self.cursor: int | None = None
        self.outstanding: dict[int, int] = {}  # seq -> attempts, fetched and not yet acked
        self.acked_max = 0
        self.attempts: dict[int, int] = {}
        self.not_before = 0.0
        self.lock = asyncio.Lock()
        self.last_lease = 0.0
        self.idle_signature: tuple[int, ...] | None = None
        self.idle_since = 0.0
        self.replaying: dict[int, float] = {}
        """Replayed dead letters handed out and not yet acknowledged: id -> when."""


class SQLiteBus(Bus):
    def __init__(self, path: Path | str, synchronous: str | None = None) -> None:
        self.path = Path(path)
        self.synchronous = synchronous or os.environ.get("TESSERA_SQLITE_SYNCHRONOUS", "FULL")
        self.owner = uuid.uuid4().hex
        self._queue: queue.Queue[tuple[str, Sequence[Message], Future[list[bool]]] | None] = (
            queue.Queue()
        )
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._consumers: dict[tuple[str, str], _Consumer] = {}
        self._closed = False
        self._checkpointer = sqlitefile.Checkpointer(self.path)
        self._wal_path = Path(str(self.path) + "-wal")

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None:
            return
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self.synchronous)
        conn.executescript(SCHEMA)
        conn.close()
        # Reads, acknowledgements, leases and dead letters skip the sync of each
        # commit: losing the last of them to a power cut only means a redelivery,
        # which processors deduplicate. Appends (the writer thread) sync: a 2xx
        # answered to a source must survive anything.
        self._reader = connect(self.path, "NORMAL" if self.synchronous == "FULL"
                               else self.synchronous)
        self._writer = threading.Thread(
            target=self._write_loop, name="tessera-bus-writer", daemon=True
        )
        self._writer.start()

    async def close(self) -> None:
        if self._writer is None or self._closed:
            return
        self._closed = True
        for (topic, group), _ in list(self._consumers.items()):
            await asyncio.to_thread(self._release_lease, topic, group)
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            self._reader.close()
        self._writer = None
        self._reader = None
        self._consumers.clear()
        self._checkpointer.stop()

    def _conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("bus not started: call await bus.start() first")
        return self._reader

    # -- publishing: one writer thread, group commit ------------------------

    def _write_loop(self) -> None:
        conn = connect(self.path, self.synchronous)
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            pending = [item]
            while len(pending) < 256:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                pending.append(more)
            try:
                results = self._append(conn, pending)
            except Exception as exc:  # the disk is full, the file is locked for too long...
                error = BusUnavailable(f"could not append to the log: {exc}")
                for _, _, fut in pending:
                    if not fut.done():
                        fut.set_exception(error)
            else:
                for (_, _, fut), result in zip(pending, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        conn.close()

    @staticmethod
    def _append(
        conn: sqlite3.Connection, pending: list[tuple[str, Sequence[Message], Future[list[bool]]]]
    ) -> list[list[bool]]:
        now = time.time()
        results: list[list[bool]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for topic, messages, _ in pending:
                ids = list({m.id for m in messages})
                existing: set[str] = set()
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    existing.update(
                        row[0]
                        for row in conn.execute(
                            f"SELECT msg_id FROM log WHERE topic = ? AND msg_id IN ({marks})",
                            [topic, *chunk],
                        )
                    )
                stored: list[bool] = []
                rows = []
                for m in messages:
                    if m.id in existing:
                        stored.append(False)
                    else:
                        existing.add(m.id)
                        stored.append(True)
                        rows.append((topic, m.id, m.key, m.payload, now))
                conn.executemany(
                    "INSERT INTO log (topic, msg_id, key, payload, appended_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                results.append(stored)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        if self._writer is None:
            raise RuntimeError("bus not started: call await bus.start() first")
        if self._closed:
            raise BusUnavailable("the bus is closing")
        if not messages:
            return []
        fut: Future[list[bool]] = Future()
        self._queue.put((topic, messages, fut))
        return await asyncio.wrap_future(fut)

    # -- consuming ----------------------------------------------------------

    def _consumer(self, topic: str, group: str) -> _Consumer:
        key = (topic, group)
        if key not in self._consumers:
            self._consumers[key] = _Consumer()
        return self._consumers[key]

    def _take_lease(self, topic: str, group: str) -> bool:
        now = time.time()
        with self._read_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT owner, expires_at FROM leases WHERE grp=? AND topic=?", (group, topic)
                ).fetchone()
                if row is not None and row[0] != self.owner and row[1] > now:
                    conn.execute("COMMIT")
                    return False
                conn.execute(
                    "INSERT INTO leases (grp, topic, owner, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (grp, topic) DO UPDATE SET owner=excluded.owner, "
                    "expires_at=excluded.expires_at",
                    (group, topic, self.owner, now + LEASE_SECONDS),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return True

    def _release_lease(self, topic: str, group: str) -> None:
        with self._read_lock:
            self._conn().execute(
                "DELETE FROM leases WHERE grp=? AND topic=? AND owner=?", (group, topic, self.owner)
            )

    def _committed(self, topic: str, group: str) -> int:
        row = (
            self._conn()
            .execute("SELECT seq FROM offsets WHERE grp=? AND topic=?", (group, topic))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def _fetch_sync(
        self, topic: str, group: str, max_messages: int, consumer: _Consumer, lease_due: bool
    ) -> list[Delivery] | None:
        """None when another process holds the group's lease."""
        if lease_due and not self._take_lease(topic, group):
            consumer.cursor = None
            return None
        with self._read_lock:
            conn = self._conn()
            if consumer.cursor is None:
                consumer.cursor = self._committed(topic, group)
                consumer.acked_max = consumer.cursor
            out: list[Delivery] = []
            now = time.monotonic()
            # a replay in flight is not handed out again (unless unanswered for long:
            # its consumer went away without acknowledging)
            out_since = now - REPLAY_ACK_WAIT_SECONDS
            consumer.replaying = {i: t for i, t in consumer.replaying.items() if t > out_since}
            for row in conn.execute(
                "SELECT id, topic, seq, msg_id, key, payload, attempts FROM dead_letters "
                "WHERE grp=? AND topic=? AND replay_requested_at IS NOT NULL "
                "AND replayed_at IS NULL ORDER BY id LIMIT ?",
                (group, topic, max_messages + len(consumer.replaying)),
            ):
                if row[0] in consumer.replaying or len(out) >= max_messages:
                    continue
                consumer.replaying[row[0]] = now
                out.append(
                    Delivery(
                        topic=topic,
                        group=group,
                        seq=row[2],
                        id=row[3],
                        key=row[4],
                        payload=row[5],
                        attempts=1,
                        handle=("replay", row[0]),
                    )
                )
            if out:
                return out
            rows = conn.execute(
                "SELECT seq, msg_id, key, payload FROM log WHERE topic=? AND seq>? "
                "ORDER BY seq LIMIT ?",
                (topic, consumer.cursor, max_messages),
            ).fetchall()
        for seq, msg_id, key, payload in rows:
            attempts = consumer.attempts.get(seq, 0) + 1
            consumer.attempts[seq] = attempts
            consumer.outstanding[seq] = attempts
            out.append(
                Delivery(
                    topic=topic,
                    group=group,
                    seq=seq,
                    id=msg_id,
                    key=key,
                    payload=payload,
                    attempts=attempts,
                    handle=("log", seq),
                )
            )
        if rows:
            consumer.cursor = rows[-1][0]
        return out

    async def fetch(
        self, topic: str, group: str, max_messages: int, timeout: float
    ) -> list[Delivery]:
        consumer = self._consumer(topic, group)
        deadline = time.monotonic() + timeout
        async with consumer.lock:
            while True:
                now = time.monotonic()
                lease_due = now - consumer.last_lease > LEASE_SECONDS / 3
                signature = self._signature()
                # Nothing was committed to the file since the last empty look: skip the
                # query (and its thread hop), but look anyway now and then.
                unchanged = (signature == consumer.idle_signature
                             and now - consumer.idle_since < IDLE_RECHECK_SECONDS)
                if now >= consumer.not_before and (lease_due or not unchanged):
                    out = await asyncio.to_thread(
                        self._fetch_sync, topic, group, max_messages, consumer, lease_due
                    )
                    if lease_due and out is not None:
                        consumer.last_lease = now
                    if out:
                        consumer.idle_signature = None
                        return out
                    if not unchanged:
                        consumer.idle_signature = signature
                        consumer.idle_since = now
                if time.monotonic() >= deadline or self._closed:
                    return []
                await asyncio.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _signature(self) -> tuple[int, ...]:
        """Changes whenever any connection commits to the log file (WAL mode)."""
        out: list[int] = []
        for path in (self._wal_path, self.path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                out += [0, 0]
            else:
                out += [st.st_mtime_ns, st.st_size]
        return tuple(out)

    def _ack_sync(self, deliveries: Sequence[Delivery]) -> None:
        now = time.time()
        with self._read_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                by_group: dict[tuple[str, str], list[int]] = {}
                for d in deliveries:
                    kind, ref = d.handle
                    if kind == "replay":
                        conn.execute("UPDATE dead_letters SET replayed_at=? WHERE id=?", (now, ref))
                        self._consumer(d.topic, d.group).replaying.pop(ref, None)
                    else:
                        by_group.setdefault((d.topic, d.group), []).append(ref)
                for (topic, group), seqs in by_group.items():
                    consumer = self._consumer(topic, group)
                    for seq in seqs:
                        consumer.outstanding.pop(seq, None)
                        consumer.attempts.pop(seq, None)
                        consumer.acked_max = max(consumer.acked_max, seq)
                    # the committed offset never passes a message still in flight
                    offset = (
                        min(consumer.outstanding) - 1
                        if consumer.outstanding
                        else consumer.acked_max
                    )
                    conn.execute(
                        "INSERT INTO offsets (grp, topic, seq) VALUES (?, ?, ?) "
                        "ON CONFLICT (grp, topic) DO UPDATE SET seq=max(seq, excluded.seq)",
                        (group, topic, offset),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await asyncio.to_thread(self._ack_sync, deliveries)

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        for d in deliveries:
            if d.handle[0] != "log":
                # a replayed dead letter stays requested until acked: hand it out again
                self._consumer(d.topic, d.group).replaying.pop(d.handle[1], None)
                continue
            consumer = self._consumer(d.topic, d.group)
            if consumer.cursor is not None:
                consumer.cursor = min(consumer.cursor, d.seq - 1)
            consumer.outstanding.pop(d.seq, None)
            consumer.not_before = time.monotonic() + delay
            consumer.idle_signature = None

    def _dead_letter_sync(self, delivery: Delivery, error: str) -> None:
        with self._read_lock:
            conn = self._conn()
            if delivery.handle[0] == "replay":
                conn.execute(
                    "UPDATE dead_letters SET error=?, attempts=attempts+?, "
                    "failed_at=?, replay_requested_at=NULL WHERE id=?",
                    (error, delivery.attempts, time.time(), delivery.handle[1]),
                )
                self._consumer(delivery.topic, delivery.group).replaying.pop(
                    delivery.handle[1], None)
                return
            conn.execute(
                "INSERT INTO dead_letters (grp, topic, seq, msg_id, key, payload, error, "
                "attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.group,
                    delivery.topic,
                    delivery.seq,
                    delivery.id,
                    delivery.key,
                    delivery.payload,
                    error,
                    delivery.attempts,
                    time.time(),
                ),
            )
        self._ack_sync([delivery])

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        await asyncio.to_thread(self._dead_letter_sync, delivery, error)

    async def dead_letters(
        self, group: str | None = None, include_replayed: bool = False
    ) -> list[DeadLetter]:
        def query() -> list[DeadLetter]:
            sql = (
                "SELECT id, grp, topic, seq, msg_id, key, payload, error, attempts, "
                "failed_at, replayed_at FROM dead_letters WHERE 1=1"
            )
            params: list[object] = []
            if group is not None:
                sql += " AND grp=?"
                params.append(group)
            if not include_replayed:
                sql += " AND replayed_at IS NULL"
            with self._read_lock:
                rows = self._conn().execute(sql + " ORDER BY id", params).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await asyncio.to_thread(query)

    async def replay_dead_letter(self, dead_letter_id: int) -> bool:
        def mark() -> bool:
            with self._read_lock:
                cur = self._conn().execute(
                    "UPDATE dead_letters SET replay_requested_at=? WHERE id=? "
                    "AND replayed_at IS NULL",
                    (time.time(), dead_letter_id),
                )
                return cur.rowcount == 1

        return await asyncio.to_thread(mark)

    async def lag(self, topic: str, group: str) -> int:
        def count() -> int:
            with self._read_lock:
                offset = self._committed(topic, group)
                row = (
                    self._conn()
                    .execute("SELECT count(*) FROM log WHERE topic=? AND seq>?", (topic, offset))
                    .fetchone()
                )
            return int(row[0])

        return await asyncio.to_thread(count)

    async def reset(self, topic: str, group: str, from_time: float) -> None:
        def rewind() -> None:
            with self._read_lock:
                conn = self._conn()
                row = conn.execute(
                    "SELECT min(seq) FROM log WHERE topic=? AND appended_at>=?", (topic, from_time)
                ).fetchone()
                seq = (int(row[0]) - 1) if row and row[0] is not None else None
                if seq is None:
                    top = conn.execute("SELECT max(seq) FROM log").fetchone()
                    seq = int(top[0] or 0)
                conn.execute(
                    "INSERT INTO offsets (grp, topic, seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (grp, topic) DO UPDATE SET seq=excluded.seq",
                    (group, topic, seq),
                )
            consumer = self._consumers.get((topic, group))
            if consumer is not None:
                consumer.cursor = None
                consumer.outstanding.clear()
                consumer.idle_signature = None

        await asyncio.to_thread(rewind)

    # -- erasure --------------------------------------------------------------

    def _erase_sync(self, topics: Sequence[str], match: Callable[[bytes], bool]) -> int:
        conn = connect(self.path, self.synchronous)
        try:
            # deleted rows and freed pages are overwritten with zeros, not just unlinked
            conn.execute("PRAGMA secure_delete=ON")
            doomed: list[int] = []
            letters: list[int] = []
            marks = ",".join("?" * len(topics))
            last = 0
            while topics:  # a page at a time: the log may be large
                rows = conn.execute(
                    f"SELECT seq, payload FROM log WHERE topic IN ({marks}) AND seq > ? "
                    f"ORDER BY seq LIMIT 2000", [*topics, last]).fetchall()
                if not rows:
                    break
                doomed += [seq for seq, payload in rows if match(payload)]
                last = rows[-1][0]
            letters = [i for i, payload in conn.execute("SELECT id, payload FROM dead_letters")
                       if match(payload)]
            if not doomed and not letters:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(doomed), 500):
                    chunk = doomed[start:start + 500]
                    conn.execute(f"DELETE FROM log WHERE seq IN ({','.join('?' * len(chunk))})",
                                 chunk)
                conn.executemany("DELETE FROM dead_letters WHERE id=?", [(i,) for i in letters])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        sqlitefile.truncate_wal(self.path)  # the WAL still holds the pages as they were
        return len(doomed) + len(letters)

    async def erase(self, topics: Sequence[str], match: Callable[[bytes], bool]) -> int:
        return await asyncio.to_thread(self._erase_sync, list(topics), match)

    # -- inspection ---------------------------------------------------------

    async def count(self, topic: str) -> int:
        def query() -> int:
            with self._read_lock:
                row = (
                    self._conn()
                    .execute("SELECT count(*) FROM log WHERE topic=?", (topic,))
                    .fetchone()
                )
            return int(row[0])

        return await asyncio.to_thread(query)
