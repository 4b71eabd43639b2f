"""How the columns of an import file become identifiers, traits and event fields.

A mapping is a small YAML or JSON document::

    kind: profiles               # or: events
    identifiers:                 # identifier type -> column (or several columns)
      email: Email
      member_number: MemberNo
    traits:                      # trait -> column
      first_name: FirstName
      lifetime_value: LTV
    types: {lifetime_value: float}
    time_column: UpdatedAt       # optional; RFC 3339, epoch seconds, or time_format
    # kind: events only
    event_type: com.example.order.completed   # or event_type_column: Type
    properties: {total: Total}

Identifier values are normalized exactly as at real-time ingest (emails
lower-cased, phones in E.164, placeholders dropped).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.events.envelope import parse_time

ValueType = Literal["string", "int", "float", "bool", "json"]


class MappingError(Exception):
    """The mapping is invalid; the message says where and why."""


class ImportMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["profiles", "events"] = "profiles"
    identifiers: dict[str, str | list[str]] = Field(min_length=1)
    """Identifier type -> the column(s) holding it."""
    traits: dict[str, str] = Field(default_factory=dict)
    """Trait name -> column."""
    properties: dict[str, str] = Field(default_factory=dict)
    """Event data field -> column (``kind: events``)."""
    types: dict[str, ValueType] = Field(default_factory=dict)
    """Trait or property name -> the type its text is converted to (default: as read)."""
    event_type: str | None = None
    event_type_column: str | None = None
    time_column: str | None = None
    time_format: str | None = None
    """A ``strptime`` format for ``time_column`` (default: RFC 3339 or epoch seconds)."""
    id_column: str | None = None
    """A column with the record's own id: events then dedupe across files, not only lines."""

    @model_validator(mode="after")
    def _check(self) -> ImportMapping:
        if self.kind == "events" and not (self.event_type or self.event_type_column):
            raise ValueError("kind 'events' needs event_type or event_type_column")
        if self.kind == "profiles" and (self.event_type_column or self.properties):
            raise ValueError("event_type_column and properties are for kind 'events'")
        named = set(self.traits) | set(self.properties)
        for name in self.types:
            if name not in named:
                raise ValueError(f"types names {name!r}, which is neither a trait nor a property")
        return self

    def columns(self) -> set[str]:
        cols: set[str] = set()
        for value in self.identifiers.values():
            cols.update([value] if isinstance(value, str) else value)
        cols.update(self.traits.values())
        cols.update(self.properties.values())
        for extra in (self.event_type_column, self.time_column, self.id_column):
            if extra:
                cols.add(extra)
        return cols

    def digest(self) -> str:
        return hashlib.blake2b(orjson.dumps(self.model_dump(), option=orjson.OPT_SORT_KEYS),
                               digest_size=8).hexdigest()

    # -- converting one value --------------------------------------------

    def convert(self, name: str, raw: Any) -> Any:
        """``raw`` as the declared type of ``name``; ValueError names the problem."""
        if isinstance(raw, str):
            raw = raw.strip()
            if raw == "":
                return None
        kind = self.types.get(name)
        if kind is None or raw is None:
            return raw
        if kind == "string":
            return str(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(f"{raw!r} is not an integer")
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            try:
                return int(str(raw))
            except ValueError:
                raise ValueError(f"{raw!r} is not an integer") from None
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError(f"{raw!r} is not a number")
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{raw!r} is not a number") from None
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text in ("true", "t", "yes", "y", "1"):
                return True
            if text in ("false", "f", "no", "n", "0"):
                return False
            raise ValueError(f"{raw!r} is not a boolean")
        # json
        if isinstance(raw, str):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ValueError(f"{raw!r} is not JSON") from None
        return raw

    def parse_time(self, raw: Any) -> float:
        if isinstance(raw, datetime):
            return (raw if raw.tzinfo else raw.replace(tzinfo=UTC)).timestamp()
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        text = str(raw).strip()
        if self.time_format:
            try:
                parsed = datetime.strptime(text, self.time_format)
            except ValueError:
                raise ValueError(f"{text!r} does not match {self.time_format!r}") from None
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        try:
            return float(text)
        except ValueError:
            pass
        return parse_time(text)


def parse_mapping(raw: Any, origin: str = "<mapping>") -> ImportMapping:
    if not isinstance(raw, dict):
        raise MappingError(f"{origin}: a mapping must be a YAML/JSON object")
    try:
        return ImportMapping.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{origin}: invalid mapping"]
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            reason = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {where}: {reason}")
        raise MappingError("\n".join(lines)) from None


def load_mapping(path: str | Path) -> ImportMapping:
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"{file}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{file}: not valid YAML/JSON: {exc}") from None
    return parse_mapping(raw, str(file))
