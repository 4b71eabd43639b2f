"""Where violations are kept: a summary by type and reason, and the quarantined events.

Behind a small interface (:class:`ViolationLog`); the implementation here is a
SQLite file in the data directory (``catalog.db``), shared by the API process
and the command line. Quarantined events are also durable on the bus's
``quarantine`` topic; this file is the index that lists and releases them.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tessera.sqlitefile import connect

FILE_NAME = "catalog.db"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event's violation: what was wrong and what was done with it."""

    uid: str
    event_id: str
    type: str
    source: str
    outcome: str
    """``rejected`` (enforce), ``quarantined`` or ``allowed``."""
    problems: list[dict[str, str]]
    """``{"pointer", "reason", "summary"}`` each."""
    event: bytes | None = None
    """The envelope's JSON, for quarantined events."""


@dataclass(frozen=True, slots=True)
class Quarantined:
    uid: str
    event_id: str
    type: str
    source: str
    problems: list[dict[str, str]]
    event: bytes
    quarantined_at: float
    released_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "id": self.event_id,
            "type": self.type,
            "source": self.source,
            "problems": self.problems,
            "quarantined_at": self.quarantined_at,
            "released_at": self.released_at,
            "event": orjson.loads(self.event),
        }


class ViolationLog(abc.ABC):
    @abc.abstractmethod
    def record(self, outcomes: list[Outcome]) -> None:
        """Count the violations; keep the quarantined events."""

    @abc.abstractmethod
    def summary(self) -> list[dict[str, Any]]:
        """Counts by (type, reason, source, outcome), most frequent first."""

    @abc.abstractmethod
    def quarantined(self, event_type: str | None = None, include_released: bool = False,
                    limit: int = 1000) -> list[Quarantined]:
        """Quarantined events, oldest first."""

    @abc.abstractmethod
    def released(self, uids: list[str]) -> None:
        """Mark quarantined events released."""

    @abc.abstractmethod
    def still_invalid(self, uid: str, problems: list[dict[str, str]]) -> None:
        """A release found the event still invalid: keep its current problems."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS summary (
    type TEXT NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, outcome TEXT NOT NULL,
    count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
    last_event_id TEXT NOT NULL,
    PRIMARY KEY (type, reason, source, outcome));
CREATE TABLE IF NOT EXISTS quarantine (
    uid TEXT PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
    problems BLOB NOT NULL, event BLOB NOT NULL, quarantined_at REAL NOT NULL,
    released_at REAL);
CREATE INDEX IF NOT EXISTS quarantine_pending ON quarantine (released_at, quarantined_at);
"""


class SQLiteViolationLog(ViolationLog):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(path, "NORMAL")
        self._conn.execute("PRAGMA wal_autocheckpoint=1000")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def record(self, outcomes: list[Outcome]) -> None:
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for o in outcomes:
                    reasons = {p.get("summary") or p["reason"] for p in o.problems}
                    for reason in reasons:
                        self._conn.execute(
                            "INSERT INTO summary VALUES (?,?,?,?,1,?,?,?) "
                            "ON CONFLICT (type, reason, source, outcome) DO UPDATE SET "
                            "count = count + 1, last_at = excluded.last_at, "
                            "last_event_id = excluded.last_event_id",
                            (o.type, reason, o.source, o.outcome, now, now, o.event_id),
                        )
                    if o.outcome == "quarantined" and o.event is not None:
                        # a resent quarantined event stays one entry, pending again
                        self._conn.execute(
                            "INSERT INTO quarantine VALUES (?,?,?,?,?,?,?,NULL) "
                            "ON CONFLICT (uid) DO UPDATE SET problems = excluded.problems, "
                            "event = excluded.event, released_at = NULL "
                            "WHERE quarantine.released_at IS NULL",
                            (o.uid, o.event_id, o.type, o.source, orjson.dumps(o.problems),
                             o.event, now),
                        )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, reason, source, outcome, count, first_at, last_at, last_event_id "
                "FROM summary ORDER BY count DESC, type, reason"
            ).fetchall()
            pending = dict(self._conn.execute(
                "SELECT type, count(*) FROM quarantine WHERE released_at IS NULL GROUP BY type"
            ).fetchall())
        names = ("type", "reason", "source", "outcome", "count", "first_at", "last_at",
                 "last_event_id")
        out = [dict(zip(names, r, strict=True)) for r in rows]
        for row in out:
            row["quarantined_pending"] = pending.get(row["type"], 0)
        return out

    def quarantined(self, event_type: str | None = None, include_released: bool = False,
                    limit: int = 1000) -> list[Quarantined]:
        where, args = [], []
        if not include_released:
            where.append("released_at IS NULL")
        if event_type is not None:
            where.append("type = ?")
            args.append(event_type)
        sql = ("SELECT uid, event_id, type, source, problems, event, quarantined_at, released_at "
               "FROM quarantine" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY quarantined_at, uid LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, (*args, limit)).fetchall()
        return [Quarantined(r[0], r[1], r[2], r[3], orjson.loads(r[4]), bytes(r[5]), r[6], r[7])
                for r in rows]

    def released(self, uids: list[str]) -> None:
        now = time.time()
        with self._lock:
            self._conn.executemany("UPDATE quarantine SET released_at = ? WHERE uid = ?",
                                   [(now, u) for u in uids])

    def still_invalid(self, uid: str, problems: list[dict[str, str]]) -> None:
        with self._lock:
            self._conn.execute("UPDATE quarantine SET problems = ? WHERE uid = ?",
                               (orjson.dumps(problems), uid))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_log(data_dir: Path) -> ViolationLog:
    try:
        return SQLiteViolationLog(Path(data_dir) / FILE_NAME)
    except sqlite3.Error as exc:  # pragma: no cover - a broken file
        raise RuntimeError(f"cannot open the violations log: {exc}") from exc
