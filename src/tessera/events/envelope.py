"""The one internal envelope every ingest path maps to.

It is a CloudEvent (``id``, ``source``, ``type``, ``time``, ``data`` and the
optional attributes) plus what Tessera stamps on it at ingest: the source
that sent it (from the write key), when it was received, and the normalized
identifiers found in it. The ``uid`` is derived from (sending source, ``source``, ``id``), so
the same event sent twice by the same source is the same event everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

Identifier = tuple[str, str]


def event_uid(source_name: str, source: str, event_id: str) -> str:
    """A stable 32-hex-digit id for (sending Tessera source, CloudEvents source, id).

    The sending source is part of it so that one write key's holder cannot
    pre-empt another source's events by sending their (source, id) first.
    """
    key = f"{source_name}\x1f{source}\x1f{event_id}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


@dataclass(slots=True)
class Event:
    id: str
    source: str
    type: str
    time: float
    """Event time, seconds since the epoch (UTC); ``received_at`` when the sender gave none."""
    received_at: float
    source_name: str
    """The Tessera source (the owner of the write key) that sent the event."""
    data: Any = None
    identifiers: list[Identifier] = field(default_factory=list)
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    specversion: str = "1.0"
    uid: str = ""

    def __post_init__(self) -> None:
        if not self.uid:
            self.uid = event_uid(self.source_name, self.source, self.id)

    @property
    def partition_key(self) -> str:
        """The identity the bus orders by: the event's first (highest-priority) identifier."""
        if self.identifiers:
            t, v = self.identifiers[0]
            return f"{t}:{v}"
        return self.uid

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        fields = orjson.loads(raw)
        fields["identifiers"] = [(t, v) for t, v in fields.get("identifiers", ())]
        return cls(**fields)

    def to_cloudevent(self) -> dict[str, Any]:
        """This event as a structured-mode CloudEvent (JSON format)."""
        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": iso_time(self.time),
        }
        for name in ("subject", "datacontenttype", "dataschema"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        out["data"] = self.data
        out["tesserasource"] = self.source_name
        # the events of one request share their receive time: formatted once
        out["tesserareceivedat"] = _received_times(self.received_at)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class IsoTimes:
    """``iso_time`` remembered for up to ``size`` times: the rows of an import share their
    receive time and, without a time column, their event time, so a chunk formats one or
    two instead of one per row."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._known: dict[float, str] = {}

    def __call__(self, ts: float) -> str:
        found = self._known.get(ts)
        if found is None:
            if len(self._known) >= self.size:
                self._known.clear()
            found = self._known[ts] = iso_time(ts)
        return found


_received_times = IsoTimes(4096)


def parse_time(value: Any) -> float:
    """Parse an RFC 3339 timestamp into epoch seconds; ValueError names the problem."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be an RFC 3339 timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
