"""The review queue and the memory of probabilistic match decisions.

Each candidate pair of profiles found by :mod:`tessera.identity.matching` is
kept here with its score and its state: ``pending`` (waiting for a person),
``merged`` (merged automatically above the high threshold, or accepted),
``rejected`` (a person said no, or the merge was undone by an unmerge).
Decided pairs are never queued or merged again: before a match run uses a
decision, both sides are followed through later merges to the profiles they
are part of now.

The decisions live in a SQLite file in the data directory
(``identity-review.sqlite``), next to the embedded store.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    score REAL NOT NULL,
    state TEXT NOT NULL,
    found_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    note TEXT,
    a_identifiers BLOB,
    b_identifiers BLOB,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS pairs_state ON pairs (state, score);
CREATE TABLE IF NOT EXISTS unmerges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id TEXT NOT NULL,
    split_into BLOB NOT NULL,
    at REAL NOT NULL,
    by TEXT
);
"""
STATES = ("pending", "merged", "rejected")


@dataclass(slots=True)
class Pair:
    a: str
    b: str
    score: float
    state: str
    found_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": self.score, "state": self.state,
                "found_at": self.found_at, "decided_at": self.decided_at,
                "decided_by": self.decided_by, "note": self.note}


def ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class ReviewStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> ReviewStore:
        return cls(Path(data_dir) / "identity-review.sqlite")

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Pair]:
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        for r in rows:
            yield Pair(*r)

    _COLS = "a, b, score, state, found_at, decided_at, decided_by, note"

    def get(self, a: str, b: str) -> Pair | None:
        a, b = ordered(a, b)
        return next(self._rows(f"SELECT {self._COLS} FROM pairs WHERE a=? AND b=?", (a, b)), None)

    def pairs(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[Pair]:
        where, params = ("WHERE state=?", [state]) if state else ("", [])
        return list(self._rows(
            f"SELECT {self._COLS} FROM pairs {where} ORDER BY score DESC, a, b LIMIT ? OFFSET ?",
            [*params, limit, offset]))

    def decided(self) -> list[Pair]:
        return list(self._rows(f"SELECT {self._COLS} FROM pairs WHERE state != 'pending'"))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, count(*) FROM pairs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({s: n for s, n in rows})
        return out

    def queue(self, found: Iterable[tuple[str, str, float]]) -> int:
        """Add pending pairs; pairs already known (pending or decided) keep their state."""
        now = time.time()
        rows = [(*ordered(a, b), score, now) for a, b, score in found]
        with self._lock:
            before = self._conn.total_changes
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO pairs (a, b, score, state, found_at) VALUES (?, ?, ?, 'pending', ?) "
                "ON CONFLICT (a, b) DO UPDATE SET score=excluded.score WHERE state='pending'",
                rows)
            self._conn.execute("COMMIT")
            return self._conn.total_changes - before

    def record(self, a: str, b: str, score: float, state: str, by: str, note: str | None = None,
               a_identifiers: Sequence[tuple[str, str]] = (),
               b_identifiers: Sequence[tuple[str, str]] = ()) -> None:
        self.record_many([(a, b, score, state, by, note, a_identifiers, b_identifiers)])

    def record_many(self, decisions: Sequence[tuple[str, str, float, str, str, str | None,
                                                    Sequence[tuple[str, str]],
                                                    Sequence[tuple[str, str]]]]) -> None:
        """Remember decisions ``(a, b, score, state, by, note, a_ids, b_ids)`` in one commit."""
        now = time.time()
        rows = []
        for a, b, score, state, by, note, a_ids, b_ids in decisions:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
            if (a, b) != ordered(a, b):
                a, b, a_ids, b_ids = b, a, b_ids, a_ids
            rows.append((a, b, score, state, now, now, by, note,
                         orjson.dumps(list(a_ids)) if a_ids else None,
                         orjson.dumps(list(b_ids)) if b_ids else None))
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO pairs (a, b, score, state, found_at, decided_at, decided_by, note, "
                "a_identifiers, b_identifiers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (a, b) DO UPDATE SET state=excluded.state, "
                "decided_at=excluded.decided_at, decided_by=excluded.decided_by, "
                "note=excluded.note, a_identifiers=coalesce(excluded.a_identifiers, "
                "a_identifiers), b_identifiers=coalesce(excluded.b_identifiers, b_identifiers)",
                rows)
            self._conn.execute("COMMIT")

    def held(self, profile_id: str, other: str) -> list[tuple[str, str]]:
        """The identifiers ``profile_id`` held when it and ``other`` were merged (empty if
        unknown)."""
        a, b = ordered(profile_id, other)
        column = "a_identifiers" if a == profile_id else "b_identifiers"
        with self._lock:
            row = self._conn.execute(f"SELECT {column} FROM pairs WHERE a=? AND b=?",
                                     (a, b)).fetchone()
        return [] if row is None else [tuple(x) for x in orjson.loads(row[0] or b"[]")]

    def merged_into_others(self, profile_id: str) -> list[tuple[str, list[tuple[str, str]]]]:
        """For each merged pair naming this profile: the other side, and the identifiers this
        profile held when the two were merged (pairs without that provenance left out).

        Unmerge needs it for a chain: when A was merged into B and B later into C, the
        store records A as merged into C, while the provenance is the pair (B, A)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT a, b, a_identifiers, b_identifiers FROM pairs "
                "WHERE state = 'merged' AND (a = ? OR b = ?)", (profile_id, profile_id)).fetchall()
        out = []
        for a, b, a_ids, b_ids in rows:
            mine = a_ids if a == profile_id else b_ids
            if mine:
                out.append((b if a == profile_id else a, [tuple(x) for x in orjson.loads(mine)]))
        return out

    def record_unmerge(self, profile_id: str, split_into: list[str], by: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO unmerges (profile_id, split_into, at, by) VALUES (?, ?, ?, ?)",
                (profile_id, orjson.dumps(split_into), time.time(), by))
