"""Outbox messages of one shape, packed: a thousand records to an outbox row.

A batch import of a million profiles queues one ``profile.updated`` message per
profile, about 1 KB of JSON each, and most of those bytes are the same for
every message of the batch (field names, the source, the cause's type); only a
few values differ (the profile id, the event uid and id, the changed values).
Written as they are, those messages are the largest table the import writes: a
third of all its bytes, copied once more by the WAL commit and again by the
checkpoint. So the caller states the message once, as a :class:`Template` of
constant text and numbered fields, and gives each message as its fields only;
:meth:`PackedMessages.build` packs up to ``PACK`` such records into one outbox
row, and the store expands them again (:func:`messages`) when the outbox is read
for the bus, byte for byte the messages the template describes.

A packed row's payload is ``MARK``, the template as a JSON document (one line:
JSON text holds no raw newline), ``b"\\n"``, then the records separated by
``RS`` (``"\\x1e"``), each record its fields separated by ``US`` (``"\\x1f"``),
UTF-8. Its message id and key are empty (each message has its own, from the
template); its topic is the template's.

The invariant: a field never contains ``RS`` or ``US``. Callers put JSON text
written by orjson (which escapes every control character), hex ids and numbers
into fields; :meth:`PackedMessages.build` refuses anything else with
``ValueError``. An id that an erasure looks for (a profile id) must be whole in
one field or in the template's text, never split across them: an erasure finds
a packed row by the id's bytes in the stored row.

Rows written before this format, and rows of :meth:`StoreTx.add_outbox`, carry
one ordinary message each; a payload that does not start with ``MARK`` is
published as it is (no JSON document, and no sealed payload, starts with NUL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

MARK = b"\x00tpk1"
"""Starts a packed row (the personalization state's compact rows start with ``\\x00seg1``)."""

PACK = 1000
"""Records per outbox row at most: the relay publishes a row's messages in one go."""

RS = "\x1e"
"""Separates the records of a row."""

US = "\x1f"
"""Separates the fields of a record."""

Part = str | int
"""Constant text, or the index of one of a record's fields."""

Message = tuple[str, str, str, bytes]
"""(topic, message id, key, payload): what :meth:`StoreTx.add_outbox` takes."""


def _check(parts: Sequence[Part], name: str) -> None:
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, str | int):
            raise TypeError(f"template {name}: {part!r} is neither text nor a field index")
        if isinstance(part, int) and part < 0:
            raise ValueError(f"template {name}: field index {part} is negative")


@dataclass(frozen=True)
class Template:
    """One shape of message: each of ``id``, ``key`` and ``payload`` is constant text
    (``str``) and fields of the record (``int``, the field's index) in order. A message
    is the template filled: ``"".join(fields[p] if isinstance(p, int) else p ...)``."""

    topic: str
    id: tuple[Part, ...]
    key: tuple[Part, ...]
    payload: tuple[Part, ...]

    def __post_init__(self) -> None:
        for name in ("id", "key", "payload"):
            parts = getattr(self, name)
            if not isinstance(parts, tuple):
                object.__setattr__(self, name, parts := tuple(parts))
            _check(parts, name)

    @property
    def fields(self) -> int:
        """How many fields every record has: one more than the highest index used (at
        least one: a template without fields takes records of one, unused, field)."""
        return max((p for p in (*self.id, *self.key, *self.payload) if isinstance(p, int)),
                   default=0) + 1

    def header(self) -> bytes:
        """The template as one line of JSON (orjson escapes newlines inside strings)."""
        return orjson.dumps({"topic": self.topic, "id": list(self.id), "key": list(self.key),
                             "payload": list(self.payload)})

    def fill(self, fields: Sequence[str]) -> Message:
        """The message of one record's fields (slow and plain: what :func:`messages`
        does at C speed)."""

        def join(parts: tuple[Part, ...]) -> str:
            return "".join(fields[p] if isinstance(p, int) else p for p in parts)

        return (self.topic, join(self.id), join(self.key), join(self.payload).encode())


@dataclass(slots=True)
class PackedMessages:
    """Messages of one :class:`Template`, as the outbox rows that hold them: ``rows`` are
    the row payloads, ready to store, of ``count`` records in order."""

    template: Template
    rows: list[bytes] = field(default_factory=list)
    count: int = 0

    @classmethod
    def build(cls, template: Template, records: Sequence[str]) -> PackedMessages:
        """Pack ``records`` (each one message's fields joined by ``US``) into rows of up to
        ``PACK``. ``ValueError`` if a field holds ``RS`` or ``US``, or a record has not
        the template's number of fields.

        Checked per row, not per record: the row's bytes with everything but the two
        separators deleted (``bytes.translate``, one C pass; UTF-8 never uses those
        bytes inside a character) must be exactly the separators of right records,
        ``want`` US then RS, ``n`` times, without the last RS. Counting each separator
        over the row would let a record short of a field and another with a US inside
        one balance out.
        """
        head = MARK + template.header() + b"\n"
        want = template.fields - 1
        unit = US.encode() * want + RS.encode()
        full = (unit * PACK)[:-1]
        rows: list[bytes] = []
        for start in range(0, len(records), PACK):
            run = records[start:start + PACK]
            data = RS.join(run).encode()
            seps = data.translate(None, _NOT_SEPARATORS)
            if seps != (full if len(run) == PACK else (unit * len(run))[:-1]):
                raise ValueError(f"a packed outbox field contains a separator (\\x1e, \\x1f), "
                                 f"or a record has not {want + 1} fields")
            rows.append(head + data)
        return cls(template, rows, len(records))


_NOT_SEPARATORS = bytes(b for b in range(256) if b not in (0x1E, 0x1F))
"""Every byte but ``RS`` and ``US``: what :meth:`PackedMessages.build` deletes."""


@lru_cache(maxsize=64)
def _filler(header: bytes) -> tuple[Callable[[list[str]], Message], int]:
    """For a packed row's template: a function from a record's fields to its message
    (``str.format`` patterns, one C call per part of the message), and the number of
    fields a record has. Cached: the rows of one import share one template."""
    doc = orjson.loads(header)
    template = Template(doc["topic"], tuple(doc["id"]), tuple(doc["key"]), tuple(doc["payload"]))

    def pattern(parts: tuple[Part, ...]) -> str:
        return "".join(f"{{{p}}}" if isinstance(p, int)
                       else p.replace("{", "{{").replace("}", "}}") for p in parts)

    topic = template.topic
    fid, fkey, fpay = (pattern(template.id).format, pattern(template.key).format,
                       pattern(template.payload).format)

    def fill(fields: list[str]) -> Message:
        return (topic, fid(*fields), fkey(*fields), fpay(*fields).encode())

    return fill, template.fields


def split_row(payload: bytes) -> tuple[bytes, list[str]]:
    """A packed row payload's head (``MARK``, the template, the newline) and its records."""
    if not payload.startswith(MARK):
        raise ValueError("not a packed outbox row")
    end = payload.index(b"\n") + 1
    return payload[:end], payload[end:].decode().split(RS)


def messages(payload: bytes, topic: str = "", message_id: str = "", key: str = ""
             ) -> list[Message]:
    """The (topic, message id, key, payload) of every message of one outbox row, in order.

    A packed row gives its records filled into its template; any other row is one
    ordinary message, ``(topic, message_id, key, payload)`` as it was stored."""
    if not payload.startswith(MARK):
        return [(topic, message_id, key, payload)]
    head, recs = split_row(payload)
    fill, fields = _filler(head[len(MARK):-1])
    out: list[Message] = []
    for rec in recs:
        parts = rec.split(US)
        if len(parts) != fields:
            raise ValueError(f"a packed outbox record has {len(parts)} fields, not {fields}")
        out.append(fill(parts))
    return out


def expand(packed: PackedMessages) -> list[Message]:
    """Every message of ``packed``, in order: what a backend without packed rows stores."""
    out: list[Message] = []
    for row in packed.rows:
        out += messages(row)
    return out


def pack_records(head: bytes, recs: Iterable[str]) -> bytes:
    """A packed row payload again, of ``head`` (from :func:`split_row`) and some records."""
    return head + RS.join(recs).encode()
