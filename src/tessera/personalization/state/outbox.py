"""The ``segment.entered`` / ``segment.exited`` events as the state's outbox keeps them.

A first evaluation of 50 new audiences over 100,000 profiles queues about two
million entry events, each written durably with its membership in one state
transaction. The full CloudEvent of one is about 720 bytes, most of it fixed
text and values derived from a few others (its id is a digest of the cause,
kind, audience and profile; the profile id appears four times), so the outbox
keeps a compact record of those few values instead (about 170 bytes) and
:func:`published` rebuilds the event, byte for byte the JSON of
``Event(...).to_json()``, when the outbox is read for the bus.

A compact record is the payload ``MARK`` + the JSON array of the values, with
empty message id and key (both derived). Any other row (one queued before
this format, or by a caller of ``StateTx.add_outbox`` with its own payload)
is published as it is.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from tessera.events import DERIVED_TOPIC
from tessera.events.envelope import iso_time

SOURCE = "tessera/personalization"
SPECVERSION = "1.0"
ENTERED = "segment.entered"
EXITED = "segment.exited"

MARK = b"\x00seg1"
"""Starts a compact record: no JSON document (nor an event of the bus) starts with NUL."""

OutboxRow = tuple[str, str, str, bytes]
"""(topic, message id, partition key, payload)."""


def compact(kind: str, audience: str, pid: str, cause_uid: str, reason: str,
            cause_type: str | None, cause_received_at: float | None, now: float,
            since: float | None) -> OutboxRow:
    """The outbox row of one membership change (floats keep every bit: orjson writes the
    shortest text that reads back as the same float)."""
    return (DERIVED_TOPIC, "", "", MARK + orjson.dumps(
        [kind, audience, pid, cause_uid, reason, cause_type, cause_received_at, now, since]))


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


def published(topic: str, msg_id: str, key: str, payload: bytes) -> OutboxRow:
    """The row as it goes to the bus: a compact record becomes its event, anything else
    stays as it is."""
    if not payload.startswith(MARK):
        return (topic, msg_id, key, payload)
    values = orjson.loads(payload[len(MARK):])
    return event_row(*values)
