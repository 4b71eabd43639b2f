"""Find identifiers in an event and normalize them.

An identifier is a ``(type, value)`` pair. Values are normalized so that the
same person written two ways matches: emails trimmed and lower-cased, phone
numbers in E.164. Placeholder values that many systems send (``null``,
``anonymous``, ``00000``) are dropped, because one such value shared by
thousands of events would merge thousands of people into one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import phonenumbers

from tessera.config import IdentifierConfig, TesseraConfig

Identifier = tuple[str, str]


def get_path(obj: Any, path: str) -> Any:
    """Walk a dotted path (``data.member.number``) through nested mappings."""
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
        if obj is None:
            return None
    return obj


def normalize_email(value: str) -> str | None:
    value = value.strip().lower()
    if value.startswith("mailto:"):
        value = value[7:]
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or " " in value:
        return None
    return value


def make_phone_normalizer(region: str) -> Callable[[str], str | None]:
    cache: dict[str, str | None] = {}

    def normalize_phone(value: str) -> str | None:
        if value in cache:
            return cache[value]
        try:
            parsed = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            result = None
        else:
            if parsed.national_number and phonenumbers.is_possible_number(parsed):
                result = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            else:
                result = None
        if len(cache) < 100_000:
            cache[value] = result
        return result

    return normalize_phone


class IdentifierExtractor:
    """Extracts the configured identifier types from an event's envelope."""

    def __init__(self, config: TesseraConfig) -> None:
        idents = sorted(config.all_identifiers(), key=lambda i: (i.priority, i.type))
        self._types: list[tuple[IdentifierConfig, list[list[str]]]] = [
            (i, [p.split(".") for p in i.paths]) for i in idents
        ]
        self._priority = {i.type: i.priority for i in idents}
        self._blocked = {v.strip().lower() for v in config.identity.blocked_values}
        self._blocked_re = [re.compile(p) for p in config.identity.blocked_patterns]
        self._phone = make_phone_normalizer(config.identity.default_phone_region)

    def priority(self, type_: str) -> int:
        return self._priority.get(type_, 1000)

    def normalize(self, type_: str, raw: Any) -> str | None:
        """The normalized value, or None when it is empty, blocked or malformed."""
        if isinstance(raw, bool) or raw is None:
            return None
        if isinstance(raw, int | float):
            raw = str(int(raw)) if float(raw).is_integer() else str(raw)
        if not isinstance(raw, str):
            return None
        value = raw.strip()
        if not value or len(value) > 512:
            return None
        if value.lower() in self._blocked or any(r.match(value) for r in self._blocked_re):
            return None
        ident = next((i for i, _ in self._types if i.type == type_), None)
        mode = ident.normalize if ident else "none"
        if mode == "email":
            return normalize_email(value)
        if mode == "phone":
            normalized = self._phone(value)
            if normalized is None or normalized.strip("+0") == "":
                return None
            return normalized
        if mode == "lower":
            return value.lower()
        return value

    def extract(self, envelope: dict[str, Any]) -> list[Identifier]:
        """Identifiers in ``envelope`` (``{"data": ..., ...}``), highest priority first."""
        found: list[Identifier] = []
        seen: set[Identifier] = set()
        for ident, paths in self._types:
            for parts in paths:
                obj: Any = envelope
                for part in parts:
                    if isinstance(obj, dict):
                        obj = obj.get(part)
                    else:
                        obj = None
                        break
                if obj is None:
                    continue
                for raw in obj if isinstance(obj, list) else (obj,):
                    value = self.normalize(ident.type, raw)
                    if value is not None and (ident.type, value) not in seen:
                        seen.add((ident.type, value))
                        found.append((ident.type, value))
        return found

    def sort(self, identifiers: Iterable[Identifier]) -> list[Identifier]:
        return sorted(identifiers, key=lambda i: self.priority(i[0]))
