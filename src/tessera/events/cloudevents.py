"""CloudEvents 1.0 over HTTP: structured, binary and batched content modes.

Each parser returns envelopes or raises :class:`InvalidEvents` listing every
bad event with its index, the field and the reason, so that a sender can fix
all of them in one go.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from tessera.events.envelope import Event, parse_time
from tessera.events.errors import FieldError, InvalidEvents
from tessera.identity.extract import IdentifierExtractor

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REQUIRED = ("id", "source", "type")
KNOWN = {
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
}
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
MAX_ID = 256


def _check(raw: Any, index: int | None) -> list[FieldError]:
    if not isinstance(raw, dict):
        return [FieldError("(event)", "must be a JSON object", index)]
    errors: list[FieldError] = []
    spec = raw.get("specversion")
    if spec != "1.0":
        reason = "is required" if spec is None else f'must be "1.0", got {spec!r}'
        errors.append(FieldError("specversion", reason, index))
    for name in REQUIRED:
        value = raw.get(name)
        if value is None:
            errors.append(FieldError(name, "is required", index))
        elif not isinstance(value, str) or not value:
            errors.append(FieldError(name, "must be a non-empty string", index))
        elif "\x00" in value:
            errors.append(FieldError(name, "must not contain NUL characters", index))
        elif len(value) > MAX_ID:
            errors.append(FieldError(name, f"must be at most {MAX_ID} characters", index))
    if "time" in raw and raw["time"] is not None:
        try:
            parse_time(raw["time"])
        except ValueError as exc:
            errors.append(FieldError("time", str(exc), index))
    for name in ("subject", "datacontenttype", "dataschema"):
        if name in raw and raw[name] is not None and not isinstance(raw[name], str):
            errors.append(FieldError(name, "must be a string", index))
    if "data" in raw and "data_base64" in raw:
        errors.append(FieldError("data_base64", "must not be given together with data", index))
    if "data_base64" in raw:
        b64 = raw["data_base64"]
        try:
            if not isinstance(b64, str):
                raise ValueError
            base64.b64decode(b64, validate=True)
        except ValueError:
            errors.append(FieldError("data_base64", "must be a base64 string", index))
    for name in raw:
        if name not in KNOWN and not _EXTENSION_NAME.match(name):
            errors.append(
                FieldError(
                    name,
                    "is not a CloudEvents attribute name (lower-case a-z and 0-9, "
                    "at most 20 characters)",
                    index,
                )
            )
    return errors


def _to_event(
    raw: dict[str, Any], source_name: str, received_at: float, extractor: IdentifierExtractor
) -> Event:
    data = raw.get("data")
    if "data_base64" in raw:
        data = {"data_base64": raw["data_base64"]}
    time = parse_time(raw["time"]) if raw.get("time") is not None else received_at
    extensions = {k: v for k, v in raw.items() if k not in KNOWN}
    envelope = {"data": data, "subject": raw.get("subject"), **extensions}
    return Event(
        id=raw["id"],
        source=raw["source"],
        type=raw["type"],
        time=time,
        received_at=received_at,
        source_name=source_name,
        data=data,
        identifiers=extractor.extract(envelope),
        subject=raw.get("subject"),
        datacontenttype=raw.get("datacontenttype"),
        dataschema=raw.get("dataschema"),
        extensions=extensions,
    )


def parse_structured(
    raw: Any, source_name: str, received_at: float, extractor: IdentifierExtractor
) -> list[Event]:
    errors = _check(raw, None)
    if errors:
        raise InvalidEvents(errors)
    return [_to_event(raw, source_name, received_at, extractor)]


def parse_batch(
    raw: Any, source_name: str, received_at: float, extractor: IdentifierExtractor
) -> list[Event]:
    if not isinstance(raw, list):
        raise InvalidEvents([FieldError("(body)", "a batch must be a JSON array of events")])
    errors: list[FieldError] = []
    for index, item in enumerate(raw):
        errors.extend(_check(item, index))
    if errors:
        raise InvalidEvents(errors)
    return [_to_event(item, source_name, received_at, extractor) for item in raw]


def parse_binary(
    headers: Mapping[str, str],
    body: bytes,
    content_type: str | None,
    source_name: str,
    received_at: float,
    extractor: IdentifierExtractor,
) -> list[Event]:
    """Binary mode: attributes in ``ce-*`` headers, the body is the data.

    Header values are percent-decoded, as the HTTP binding percent-encodes
    space, ``"``, ``%`` and everything outside printable ASCII.
    """
    raw: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-") and len(lower) > 3:
            raw[lower[3:]] = unquote(value) if "%" in value else value
    if content_type:
        raw["datacontenttype"] = content_type
    if body:
        media = (content_type or "").split(";")[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            try:
                raw["data"] = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvents(
                    [FieldError("data", f"body is not valid JSON: {exc}")]
                ) from None
        elif media.startswith("text/"):
            try:
                raw["data"] = body.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidEvents([FieldError("data", "text body is not UTF-8")]) from None
        else:
            raw["data_base64"] = base64.b64encode(body).decode("ascii")
    return parse_structured(raw, source_name, received_at, extractor)
