"""Shared SQLite settings for the embedded bus and store files.

Both files run in WAL mode. Writers commit without checkpointing
(``wal_autocheckpoint=0``); a background thread copies the WAL back into the
database file instead, so that a request or a batch never pays for a
checkpoint of everybody else's writes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

WAL_TRUNCATE_BYTES = 256 * 1024 * 1024


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


class SchemaFile:
    """One SQLite file with its schema, opened on first use (WAL, ``busy_timeout``, the
    same settings as every Tessera file) and shared by the threads of a process under
    ``self._lock``. The base of the small state files beside the store (activation,
    personalization)."""

    def __init__(self, path: Path | str, schema: str, synchronous: str | None = None) -> None:
        self.path = Path(path)
        self.schema = schema
        self.synchronous = synchronous or os.environ.get("TESSERA_SQLITE_SYNCHRONOUS", "FULL")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            with self._lock:
                if self._conn is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    conn = connect(self.path, self.synchronous)
                    conn.execute("PRAGMA wal_autocheckpoint=1000")
                    conn.executescript(self.schema)
                    self._conn = conn
        return self._conn

    def migrate(self) -> None:
        self.conn()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Checkpointer:
    """Checkpoints one database's WAL every ``interval`` seconds in a daemon thread."""

    def __init__(self, path: Path, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"checkpoint-{self.path.name}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=100")
        wal = Path(str(self.path) + "-wal")
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal.exists() and wal.stat().st_size > WAL_TRUNCATE_BYTES:
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                except sqlite3.Error:
                    continue  # busy: try again next time
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.close()
        except sqlite3.Error:
            pass


def truncate_wal(path: Path, attempts: int = 50) -> bool:
    """Copy the WAL into the database and empty it, so that no old page version remains
    in it (after an erasure). Readers that hold an old snapshot make it wait; True once
    the WAL is empty."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=200")
        for _ in range(attempts):
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError:
                busy = 1
            if not busy:
                return True
            threading.Event().wait(0.05)
        return False
    finally:
        conn.close()
