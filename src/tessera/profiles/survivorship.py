"""Which value of a trait survives when several sources and events disagree.

By default the latest *event time* wins, so a late event that describes an
older state never overwrites a newer value. A trait rule or the global source
order can give some sources priority: a higher-priority source wins whatever
the times, and among equals the latest event time wins.
"""

from __future__ import annotations

from tessera.config import TesseraConfig
from tessera.store.base import Trait


class Survivorship:
    def __init__(self, config: TesseraConfig) -> None:
        self._source_priority = {s.name: s.priority for s in config.sources}
        ordered = config.traits.source_priority
        self._global = {name: len(ordered) - i for i, name in enumerate(ordered)}
        self._rules = {
            rule.trait: {name: len(rule.sources) - i for i, name in enumerate(rule.sources)}
            for rule in config.traits.rules
        }

    def priority(self, trait: str, source: str) -> int:
        rule = self._rules.get(trait)
        if rule is not None:
            return rule.get(source, 0)
        if self._global:
            return self._global.get(source, 0)
        return self._source_priority.get(source, 0)

    @staticmethod
    def wins(new: Trait, old: Trait | None) -> bool:
        """True if ``new`` should replace ``old``."""
        if old is None:
            return True
        if new.priority != old.priority:
            return new.priority > old.priority
        return new.time >= old.time

    def combine(self, traits: list[dict[str, Trait]]) -> dict[str, Trait]:
        """Survivors of several profiles' traits (a merge)."""
        out: dict[str, Trait] = {}
        for profile_traits in traits:
            for name, trait in profile_traits.items():
                current = out.get(name)
                if current is None or self.better(trait, current):
                    out[name] = trait
        return out

    @staticmethod
    def better(a: Trait, b: Trait) -> bool:
        """Strict order used for merges, so the result does not depend on argument order."""
        return (a.priority, a.time, a.event_uid) > (b.priority, b.time, b.event_uid)
