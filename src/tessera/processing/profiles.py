"""The "profiles" processor: dedupe, resolve identity, apply traits, keep the timeline.

A batch of events is applied in one store transaction together with the
record of which events it applied, and the derived events it emits
(``identity.merged``, ``profile.updated``) go to the store's outbox in the same
transaction. Applying a batch twice therefore changes nothing the second time,
and no derived event is lost between the store and the bus.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tessera.config import TesseraConfig
from tessera.events.envelope import Event, event_uid, iso_time
from tessera.identity.resolver import IdentityResolver
from tessera.profiles.survivorship import Survivorship
from tessera.profiles.traits import TraitExtractor
from tessera.store.base import Conflict, Store, StoreTx, TimelineEntry, Trait

DERIVED_TOPIC = "derived"
DERIVED_SOURCE = "tessera/profiles"


@dataclass(slots=True)
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    unattributed: int = 0
    profiles_created: int = 0
    merges: int = 0
    derived: list[Event] = field(default_factory=list)


class ProfileProcessor:
    """Applies events to the store. Pure domain logic over the store contract."""

    def __init__(self, config: TesseraConfig, store: Store) -> None:
        self.store = store
        self.resolver = IdentityResolver(config)
        self.survivorship = Survivorship(config)
        self.traits = TraitExtractor(config)

    def apply(self, events: Sequence[Event], retries: int = 5) -> BatchResult:
        for attempt in range(retries + 1):
            try:
                with self.store.transaction() as tx:
                    return self._apply(tx, events)
            except Conflict:
                if attempt == retries:
                    raise
                time.sleep(0.005 * (2**attempt))
        raise AssertionError("unreachable")

    def _apply(self, tx: StoreTx, events: Sequence[Event]) -> BatchResult:
        result = BatchResult()
        now = time.time()
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.uid, event)
        already = tx.applied(list(unique))
        fresh = [e for uid, e in unique.items() if uid not in already]
        result.duplicates = len(events) - len(fresh)
        for event in fresh:
            self._apply_one(tx, event, now, result)
        tx.mark_applied([e.uid for e in fresh], now)
        if result.derived:
            tx.add_outbox(
                [(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json()) for d in result.derived]
            )
        result.applied = len(fresh)
        return result

    def _apply_one(self, tx: StoreTx, event: Event, now: float, result: BatchResult) -> None:
        resolution = self.resolver.resolve(tx, event.identifiers, event.uid, now, event.source_name)
        if resolution is None:
            result.unattributed += 1
            return
        pid = resolution.profile_id
        result.profiles_created += resolution.created
        new_traits = self.traits.extract(event)
        current: dict[str, Trait] = {}
        if resolution.merged:
            result.merges += 1
            every = tx.traits([pid, *resolution.merged])
            combined = self.survivorship.combine([every[p] for p in [pid, *resolution.merged]])
            tx.delete_traits(resolution.merged)
            changed_by_merge = {n: t for n, t in combined.items() if every[pid].get(n) is not t}
            if changed_by_merge:
                tx.put_traits(pid, changed_by_merge)
            current = combined
            result.derived.append(self._merged_event(event, pid, resolution.merged, now))
        elif new_traits and not resolution.created:
            current = tx.traits([pid])[pid]
        changed: dict[str, Trait] = {}
        diff: dict[str, Any] = {}
        for name, value in new_traits.items():
            candidate = Trait(
                value,
                event.source_name,
                event.time,
                self.survivorship.priority(name, event.source_name),
                event.uid,
            )
            old = current.get(name)
            if self.survivorship.wins(candidate, old):
                changed[name] = candidate
                if old is None or old.value != value:
                    diff[name] = {"old": None if old is None else old.value, "new": value}
        if changed:
            tx.put_traits(pid, changed)
        if diff:
            result.derived.append(self._updated_event(event, pid, diff, now))
        tx.append_timeline(
            pid,
            [
                TimelineEntry(
                    event_uid=event.uid,
                    type=event.type,
                    source=event.source_name,
                    time=event.time,
                    received_at=event.received_at,
                    event=event.to_cloudevent(),
                )
            ],
            now,
        )

    @staticmethod
    def _merged_event(cause: Event, into: str, merged: list[str], now: float) -> Event:
        return Event(
            id=f"{cause.uid}:identity.merged",
            source=DERIVED_SOURCE,
            type="identity.merged",
            time=now,
            received_at=now,
            source_name="tessera",
            data={
                "profile_id": into,
                "merged_profile_ids": merged,
                "caused_by": {"id": cause.id, "source": cause.source, "uid": cause.uid},
                "reason": "deterministic",
                "at": iso_time(now),
            },
            identifiers=[("profile_id", into)],
            subject=into,
            datacontenttype="application/json",
        )

    @staticmethod
    def _updated_event(cause: Event, pid: str, diff: dict[str, Any], now: float) -> Event:
        return Event(
            id=f"{cause.uid}:profile.updated",
            source=DERIVED_SOURCE,
            type="profile.updated",
            time=cause.time,
            received_at=now,
            source_name="tessera",
            data={
                "profile_id": pid,
                "changed": diff,
                "caused_by": {
                    "id": cause.id,
                    "source": cause.source,
                    "uid": cause.uid,
                    "type": cause.type,
                },
            },
            identifiers=[("profile_id", pid)],
            subject=pid,
            datacontenttype="application/json",
        )


def decode(payload: bytes) -> Event:
    return Event(**orjson.loads(payload))


__all__ = ["DERIVED_TOPIC", "BatchResult", "ProfileProcessor", "decode", "event_uid"]
