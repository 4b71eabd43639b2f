"""The ``segment.entered`` / ``segment.exited`` events as the state's outbox keeps them.

A first evaluation of 50 new audiences over 100,000 profiles queues about two
million entry events, each written durably with its membership in one state
transaction. The full CloudEvent of one is about 720 bytes, most of it fixed
text and values derived from a few others (its id is a digest of the cause,
kind, audience and profile; the profile id appears four times), so the outbox
keeps a compact record of those few values instead (about 170 bytes) and
:func:`published` rebuilds the event, byte for byte the JSON of
``Event(...).to_json()``, when the outbox is read for the bus.

A row of compact records is the payload ``MARK`` + a JSON array of records
(each the array of one event's values), with empty message id and key (both
derived). :func:`packed` puts up to ``PACK`` records of one transaction into
one row: a first evaluation writes one outbox row per thousand events instead
of one per event, and the relay publishes them together and deletes the row
once all are on the bus (a crash in between publishes them again; the bus
keeps one of each id). Any other row (one queued before this format, or by a
caller of ``StateTx.add_outbox`` with its own payload) is published as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from tessera.events import DERIVED_TOPIC
from tessera.events.envelope import iso_time
from tessera.store.base import OutboxMessage

SOURCE = "tessera/personalization"
SPECVERSION = "1.0"
ENTERED = "segment.entered"
EXITED = "segment.exited"

MARK = b"\x00seg1"
"""Starts a compact record: no JSON document (nor an event of the bus) starts with NUL."""

OutboxRow = tuple[str, str, str, bytes]
"""(topic, message id, partition key, payload)."""


PACK = 1000
"""Records per outbox row at most: the relay publishes a row's events in one call."""


def compact(kind: str, audience: str, pid: str, cause_uid: str, reason: str,
            cause_type: str | None, cause_received_at: float | None, now: float,
            since: float | None) -> OutboxRow:
    """The outbox row of one membership change: one compact record (floats keep every
    bit: orjson writes the shortest text that reads back as the same float)."""
    return (DERIVED_TOPIC, "", "", b"%b[%b]" % (MARK, orjson.dumps(
        [kind, audience, pid, cause_uid, reason, cause_type, cause_received_at, now, since])))


def packed(rows: list[OutboxRow], most: int = PACK) -> list[OutboxRow]:
    """The rows to write for these: each run of compact rows in rows of up to ``most``
    records, in order; any other row as it is."""
    out: list[OutboxRow] = []
    run: list[bytes] = []
    start = len(MARK) + 1

    def close() -> None:
        out.append((DERIVED_TOPIC, "", "", b"%b[%b]" % (MARK, b",".join(run))))
        run.clear()

    for row in rows:
        payload = row[3]
        if payload.startswith(MARK):
            records = payload[start:-1]  # one or more records, without the brackets
            if records:
                run.append(records)
            if len(run) >= most:
                close()
        else:
            if run:
                close()
            out.append(row)
    if run:
        close()
    return out


class _Iso:
    """``iso_time`` remembered for the last time asked: a batch stamps thousands alike."""

    __slots__ = ("at", "text")

    def __init__(self) -> None:
        self.at = 0.0
        self.text = iso_time(0.0)

    def __call__(self, at: float) -> str:
        if self.at != at:
            self.at, self.text = at, iso_time(at)
        return self.text


_iso = _Iso()


def digest_of(cause_uid: str, kind: str, audience: str, pid: str) -> str:
    """The event's uid (its id is ``seg_`` + this): stable, so a re-run makes the same."""
    return hashlib.blake2b(f"{cause_uid}\x1f{kind}\x1f{audience}\x1f{pid}".encode(),
                           digest_size=16).hexdigest()


def event_row(kind: str, audience: str, pid: str, cause_uid: str, reason: str,
              cause_type: str | None, cause_received_at: float | None, now: float,
              since: float | None) -> OutboxRow:
    """The full row: the same JSON as ``Event(...).to_json()`` field for field (a test holds
    them equal), built directly without the envelope."""
    digest = digest_of(cause_uid, kind, audience, pid)
    data: dict[str, Any] = {
        "profile_id": pid,
        "segment": audience,
        "reason": reason,
        "at": _iso(now),
        "caused_by": {"uid": cause_uid, "type": cause_type, "received_at": cause_received_at},
    }
    if since is not None:
        data["member_since"] = iso_time(since)
    # uid given: the digest is already unique and stable, no second hash needed
    payload = orjson.dumps({
        "id": f"seg_{digest}", "source": SOURCE, "type": kind, "time": now,
        "received_at": now, "source_name": "tessera", "data": data,
        "identifiers": [["profile_id", pid]], "subject": pid,
        "datacontenttype": "application/json", "dataschema": None,
        "extensions": {"tesserasegment": audience}, "specversion": SPECVERSION,
        "uid": digest,
    })
    return (DERIVED_TOPIC, digest, f"profile_id:{pid}", payload)


def published(topic: str, msg_id: str, key: str, payload: bytes) -> list[OutboxRow]:
    """The messages of one outbox row as they go to the bus: a row of compact records
    gives their events, in order; any other row stays as it is."""
    if not payload.startswith(MARK):
        return [(topic, msg_id, key, payload)]
    return [event_row(*values) for values in orjson.loads(payload[len(MARK):])]


def messages(rows: Iterable[tuple[int, str, str, str, bytes]], limit: int) -> list[OutboxMessage]:
    """The pending messages of outbox rows (id, topic, message id, key, payload) in order,
    every message of a row with the row's id; rows stop being read once ``limit`` messages
    are there (a row of compact records gives up to ``PACK``)."""
    out: list[OutboxMessage] = []
    for id_, topic, msg_id, key, payload in rows:
        if len(out) >= limit:
            break
        out += [OutboxMessage(id_, *row) for row in published(topic, msg_id, key, payload)]
    return out
