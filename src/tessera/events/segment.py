"""The Segment Tracking API spec (``/v1/batch``, ``/v1/track``, ...), mapped to CloudEvents.

A Segment message becomes an event whose ``source`` is ``segment/<source name>``,
whose ``id`` is the ``messageId`` (so a retried message is deduplicated), and
whose ``data`` is the message itself. ``track`` events keep their event name as
the type; the other calls become ``segment.identify``, ``segment.page`` and so on.
"""

from __future__ import annotations

import uuid
from typing import Any

from tessera.events.envelope import Event, parse_time
from tessera.events.errors import FieldError
from tessera.identity.extract import IdentifierExtractor

CALLS = ("track", "identify", "page", "screen", "group", "alias")
MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024


def check_message(msg: Any, index: int | None, call: str | None = None) -> list[FieldError]:
    if not isinstance(msg, dict):
        return [FieldError("(message)", "must be a JSON object", index)]
    errors: list[FieldError] = []
    kind = msg.get("type", call)
    if call is not None and kind != call and "type" in msg:
        errors.append(FieldError("type", f"must be {call!r} on /v1/{call}", index))
    if kind not in CALLS:
        reason = "is required" if kind is None else f"must be one of {', '.join(CALLS)}"
        errors.append(FieldError("type", reason, index))
        return errors
    for name in ("userId", "anonymousId", "previousId", "groupId"):
        value = msg.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            errors.append(FieldError(name, "must be a string", index))
    if kind == "alias":
        for name in ("userId", "previousId"):
            if msg.get(name) in (None, ""):
                errors.append(FieldError(name, "is required for alias", index))
    elif msg.get("userId") in (None, "") and msg.get("anonymousId") in (None, ""):
        errors.append(FieldError("userId", "userId or anonymousId is required", index))
    if kind == "track":
        event = msg.get("event")
        if not isinstance(event, str) or not event.strip():
            errors.append(FieldError("event", "is required for track and must be a string", index))
        elif "\x00" in event:
            errors.append(FieldError("event", "must not contain NUL characters", index))
    if kind == "group" and msg.get("groupId") in (None, ""):
        errors.append(FieldError("groupId", "is required for group", index))
    for name in ("properties", "traits", "context", "integrations"):
        if name in msg and msg[name] is not None and not isinstance(msg[name], dict):
            errors.append(FieldError(name, "must be an object", index))
    for name in ("timestamp", "originalTimestamp", "sentAt"):
        if msg.get(name) is not None:
            try:
                parse_time(msg[name])
            except ValueError as exc:
                errors.append(FieldError(name, str(exc), index))
    mid = msg.get("messageId")
    if mid is not None and (not isinstance(mid, str) or not mid or len(mid) > 256):
        errors.append(
            FieldError("messageId", "must be a non-empty string of at most 256 characters", index)
        )
    return errors


def to_event(
    msg: dict[str, Any],
    call: str | None,
    source_name: str,
    received_at: float,
    extractor: IdentifierExtractor,
) -> Event:
    kind = msg.get("type") or call
    assert kind is not None
    msg = {k: v for k, v in msg.items() if k != "writeKey"}
    msg["type"] = kind
    for name in ("userId", "anonymousId", "previousId"):
        if isinstance(msg.get(name), int):
            msg[name] = str(msg[name])
    stamp = msg.get("timestamp") or msg.get("originalTimestamp")
    time = parse_time(stamp) if stamp else received_at
    message_id = msg.get("messageId") or f"tessera-{uuid.uuid4()}"
    event_type = msg["event"].strip() if kind == "track" else f"segment.{kind}"
    identifiers = extractor.extract({"data": msg})
    if kind == "alias":
        previous = extractor.normalize("user_id", msg.get("previousId"))
        if previous is not None:
            identifiers.append(("previous_id", previous))
    return Event(
        id=message_id,
        source=f"segment/{source_name}",
        type=event_type,
        time=time,
        received_at=received_at,
        source_name=source_name,
        data=msg,
        identifiers=identifiers,
        datacontenttype="application/json",
    )
