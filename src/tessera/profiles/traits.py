"""Which traits an event sets.

Segment ``identify`` calls carry ``traits``, other calls may carry
``context.traits``; CloudEvents may carry ``data.traits``. Configured trait
mappings copy any payload path of matching event types into a trait.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import orjson

from tessera.config import TesseraConfig
from tessera.events.envelope import Event
from tessera.identity.extract import get_path
from tessera.privacy.consent import consent_traits

MAX_TRAITS_PER_EVENT = 200


class TraitExtractor:
    def __init__(self, config: TesseraConfig) -> None:
        self._mappings = [(m.event, m.path, m.trait) for m in config.traits.mappings]
        self._cache: dict[str, list[tuple[str, str]]] = {}

    def _mappings_for(self, event_type: str) -> list[tuple[str, str]]:
        found = self._cache.get(event_type)
        if found is None:
            found = [
                (path, trait)
                for pattern, path, trait in self._mappings
                if fnmatchcase(event_type, pattern)
            ]
            if len(self._cache) < 10_000:
                self._cache[event_type] = found
        return found

    def extract(self, event: Event) -> dict[str, Any]:
        data = event.data
        out: dict[str, Any] = {}
        if isinstance(data, dict):
            if event.source.startswith("segment/"):
                context = data.get("context")
                if isinstance(context, dict) and isinstance(context.get("traits"), dict):
                    out.update(context["traits"])
                if data.get("type") == "identify" and isinstance(data.get("traits"), dict):
                    out.update(data["traits"])
                if isinstance(context, dict) and "consent" in context:
                    out.update(consent_traits(context["consent"]))  # consent.<purpose>
            elif isinstance(data.get("traits"), dict):
                out.update(data["traits"])
            if "consent" in data:
                out.update(consent_traits(data["consent"]))
        if self._mappings:
            envelope = {"data": data, "subject": event.subject, **event.extensions}
            for path, trait in self._mappings_for(event.type):
                value = get_path(envelope, path)
                if value is not None:
                    out[trait] = value
        if len(out) > MAX_TRAITS_PER_EVENT:
            out = dict(list(out.items())[:MAX_TRAITS_PER_EVENT])
        if out and b"\\u0000" in orjson.dumps(out):
            out = _without_nul(out)
        return out


def _without_nul(value: Any) -> Any:
    """NUL characters removed from every string: no store has to cope with them."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
