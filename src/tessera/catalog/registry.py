"""The catalog at run time: event types by name, compiled schemas by (type, version).

An event names its schema version with the CloudEvents ``dataschema``
attribute (``urn:tessera:schema:TYPE:vN`` by default, or the URI a version
declares). Without ``dataschema`` it is validated against the latest version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.catalog.model import CatalogConfig, EventType, SchemaVersion
from tessera.catalog.schemas import CompiledSchema, Problem


@dataclass(slots=True)
class _Entry:
    event: EventType
    by_uri: dict[str, SchemaVersion]
    latest: SchemaVersion | None


class Catalog:
    def __init__(self, config: CatalogConfig) -> None:
        self.config = config
        self._entries: dict[str, _Entry] = {}
        for event in config.events:
            by_uri = {event.dataschema_of(v): v for v in event.versions}
            latest = event.versions[-1] if event.versions else None
            self._entries[event.type] = _Entry(event, by_uri, latest)
        self._compiled: dict[tuple[str, int], CompiledSchema] = {}

    def __contains__(self, event_type: str) -> bool:
        return event_type in self._entries

    def get(self, event_type: str) -> EventType | None:
        entry = self._entries.get(event_type)
        return entry.event if entry else None

    @property
    def events(self) -> list[EventType]:
        return [e.event for e in self._entries.values()]

    def version(self, event_type: str, number: int) -> SchemaVersion | None:
        entry = self._entries.get(event_type)
        if entry is None:
            return None
        return next((v for v in entry.event.versions if v.version == number), None)

    def compiled(self, event_type: str, version: SchemaVersion) -> CompiledSchema:
        key = (event_type, version.version)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = CompiledSchema(version.schema_)
        return found

    def check(self, event_type: str, dataschema: str | None, data: Any) -> list[Problem] | None:
        """None for a type the catalog does not know; else the problems (empty: valid)."""
        entry = self._entries.get(event_type)
        if entry is None:
            return None
        if dataschema is not None and entry.by_uri:
            version = entry.by_uri.get(dataschema)
            if version is None:
                known = ", ".join(entry.by_uri)
                return [Problem("/dataschema", f"unknown schema version {dataschema!r} of "
                                f"{event_type}; known: {known}", "/dataschema: unknown version")]
        else:
            version = entry.latest
        if version is None:
            return []
        schema = self.compiled(event_type, version)
        if schema.is_valid(data):
            return []
        return schema.problems(data)
