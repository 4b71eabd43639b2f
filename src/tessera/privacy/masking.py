"""Personal data never reaches the logs: a structlog processor that masks it.

Logs are copied, shipped and kept far longer than profiles, and they cannot be
erased per person, so what could identify someone is masked before a line is
written:

* fields named like a declared identifier type or a catalog PII path's last
  segment (``email``, ``phone``, ``first_name`` ...) are replaced by ``***``;
* inside any string (a path, an error message), ``type:value`` identifiers of a
  known type keep their type and lose their value (``/v1/profiles/email:***``),
  and anything shaped like an e-mail address or a phone number is masked.

:func:`declare` adds the installation's identifier types and catalog PII
fields; the processor is installed by ``tessera serve`` and ``tessera worker``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from tessera.config import TesseraConfig

MASK = "***"
_BUILTIN_TYPES = {"user_id", "email", "phone", "anonymous_id", "previous_id"}
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_PHONE = re.compile(r"(?<![\w.])\+?\d[\d \-().]{7,}\d(?![\w.])")
_fields: set[str] = set(_BUILTIN_TYPES) | {"first_name", "last_name", "name", "address"}
_types: set[str] = set(_BUILTIN_TYPES)
_identifier: re.Pattern[str] = re.compile("")


def _compile() -> None:
    global _identifier
    names = "|".join(sorted((re.escape(t) for t in _types), key=len, reverse=True))
    _identifier = re.compile(rf"\b({names}):([^/\s?&'\",}}\]]+)")


def declare(config: TesseraConfig) -> None:
    """Add this configuration's identifier types and catalog PII fields to the masks."""
    _types.update(i.type for i in config.all_identifiers())
    _fields.update(i.type for i in config.all_identifiers())
    if config.catalog is not None:
        _fields.update(path.rsplit(".", 1)[-1] for e in config.catalog.events for path in e.pii)
    _compile()


def mask_text(text: str) -> str:
    text = _identifier.sub(lambda m: f"{m.group(1)}:{MASK}", text)
    text = _EMAIL.sub(MASK, text)
    return _PHONE.sub(MASK, text)


def _mask(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: MASK if k in _fields else _mask(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, depth + 1) for v in value]
    return value


def mask_pii(logger: Any, method: str, event_dict: MutableMapping[str, Any]
             ) -> MutableMapping[str, Any]:
    """The structlog processor."""
    for key, value in list(event_dict.items()):
        if key in _fields:
            event_dict[key] = MASK
        elif key not in ("timestamp", "level", "request_id", "duration_ms"):
            event_dict[key] = _mask(value)
    return event_dict


def fields() -> Iterable[str]:
    return sorted(_fields)


_compile()
