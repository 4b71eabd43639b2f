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

from tessera.config import TesseraConfig

Identifier = tuple[str, str]
_TYPES = "\x00types"  # marks the identifier types found at a node of the path tree


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
    """E.164 for valid numbers only.

    "Possible" numbers are not enough: a local number without its area code
    (``555-1234``) or a made-up one (``123-456-7890``) would be shared by
    strangers and merge them. Numbers of one repeated digit are placeholders.
    """
    cache: dict[str, str | None] = {}

    def normalize_phone(value: str) -> str | None:
        if value in cache:
            return cache[value]
        try:
            parsed = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            result = None
        else:
            digits = str(parsed.national_number)
            if len(set(digits)) > 1 and phonenumbers.is_valid_number(parsed):
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
        self._config = config
        idents = sorted(config.all_identifiers(), key=lambda i: (i.priority, i.type))
        self._priority = {i.type: i.priority for i in idents}
        self._mode = {i.type: i.normalize for i in idents}
        self._blocked = {v.strip().lower() for v in config.identity.blocked_values}
        patterns = config.identity.blocked_patterns
        self._blocked_re = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._phone = make_phone_normalizer(config.identity.default_phone_region)
        # every configured path in one tree: {"data": {"email": {TYPES: [(rank, "email")]}}}
        self._tree: dict[str, Any] = {}
        for rank, ident in enumerate(idents):
            for path in ident.paths:
                node = self._tree
                for part in path.split("."):
                    node = node.setdefault(part, {})
                node.setdefault(_TYPES, []).append((rank, ident.type))

    def priority(self, type_: str) -> int:
        return self._priority.get(type_, 1000)

    def normalize(self, type_: str, raw: Any) -> str | None:
        """The normalized value, or None when it is empty, blocked or malformed."""
        if isinstance(raw, str):
            value = raw.strip()
        elif isinstance(raw, bool) or raw is None:
            return None
        elif isinstance(raw, int | float):
            value = str(int(raw)) if float(raw).is_integer() else str(raw)
        else:
            return None
        if not value or len(value) > 512 or "\x00" in value:
            return None
        if value.lower() in self._blocked or (
                self._blocked_re is not None and self._blocked_re.match(value)):
            return None
        mode = self._mode.get(type_, "none")
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

    def normalize_column(self, type_: str, raws: Iterable[Any]) -> list[str | None]:
        """:meth:`normalize` of every value of a column, the same results, with what
        depends on the type looked up once (an import normalizes a million values a
        column)."""
        mode = self._mode.get(type_, "none")
        if mode not in ("email", "lower", "none"):
            return [self.normalize(type_, raw) for raw in raws]
        blocked, blocked_re = self._blocked, self._blocked_re
        out: list[str | None] = []
        append = out.append
        for raw in raws:
            if type(raw) is not str:
                append(self.normalize(type_, raw))
                continue
            value = raw.strip()
            if not value or len(value) > 512 or "\x00" in value:
                append(None)
                continue
            low = value.lower()
            if low in blocked or (blocked_re is not None and blocked_re.match(value)):
                append(None)
            elif mode == "email":
                append(normalize_email(value))
            else:
                append(low if mode == "lower" else value)
        return out

    def extract(self, envelope: dict[str, Any]) -> list[Identifier]:
        """Identifiers in ``envelope`` (``{"data": ..., ...}``), highest priority first."""
        hits: list[tuple[int, str, Any]] = []
        self._walk(self._tree, envelope, hits)
        if not hits:
            return []
        hits.sort(key=lambda h: h[0])
        found: list[Identifier] = []
        seen: set[Identifier] = set()
        for _, type_, obj in hits:
            for raw in obj if isinstance(obj, list) else (obj,):
                value = self.normalize(type_, raw)
                if value is not None and (type_, value) not in seen:
                    seen.add((type_, value))
                    found.append((type_, value))
        return found

    def _walk(self, node: dict[str, Any], obj: dict[str, Any],
              hits: list[tuple[int, str, Any]]) -> None:
        # visit whichever is smaller: the event's keys or the tree's
        if len(obj) < len(node):
            keys: Iterable[str] = [k for k in obj if k in node]
        else:
            keys = [k for k in node if k in obj]
        for key in keys:
            if key == _TYPES:
                continue
            child = node[key]
            value = obj[key]
            if value is None:
                continue
            types = child.get(_TYPES)
            if types is not None:
                for rank, type_ in types:
                    hits.append((rank, type_, value))
            if isinstance(value, dict) and len(child) > (types is not None):
                self._walk(child, value, hits)

    def __reduce__(self) -> tuple[Any, tuple[TesseraConfig]]:
        """Pickled as its configuration (its normalizers are closures): an import's
        reading process makes its own."""
        return (IdentifierExtractor, (self._config,))

    def sort(self, identifiers: Iterable[Identifier]) -> list[Identifier]:
        return sorted(identifiers, key=lambda i: self.priority(i[0]))
