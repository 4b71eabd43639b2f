"""The "profiles" processor: dedupe, resolve identity, apply traits, keep the timeline.

A batch of events is applied in one store transaction together with the
record of which events it applied, and the derived events it emits
(``identity.merged``, ``profile.updated``) go to the store's outbox in the same
transaction. Applying a batch twice therefore changes nothing the second time,
and no derived event is lost between the store and the bus.

A batch reads the part of the store it touches once (identity links, traits),
keeps it in memory while it resolves events one by one, and writes the
timeline, traits and counters back in bulk at the end. Before reading, it locks
every identifier of the batch and then every profile they point at, each in
sorted order, so concurrent workers on a shared store never interleave merges
and never deadlock on each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.config import TesseraConfig
from tessera.events import DERIVED_TOPIC
from tessera.events.envelope import Event, event_uid, iso_time
from tessera.identity.resolver import IdentityResolver
from tessera.profiles.survivorship import Survivorship
from tessera.profiles.traits import TraitExtractor
from tessera.store.base import (
    Conflict,
    Identifier,
    Store,
    StoreTx,
    TimelineEntry,
    Trait,
    in_transaction,
)

DERIVED_SOURCE = "tessera/profiles"
MAX_LOCK_ROUNDS = 8


@dataclass(slots=True)
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    unattributed: int = 0
    profiles_created: int = 0
    merges: int = 0
    derived: list[Event] = field(default_factory=list)

    def add(self, more: BatchResult) -> None:
        """Count ``more`` in too (a chunk applied partly in bulk, partly per event)."""
        self.applied += more.applied
        self.duplicates += more.duplicates
        self.unattributed += more.unattributed
        self.profiles_created += more.profiles_created
        self.merges += more.merges
        self.derived += more.derived


class BatchGraph:
    """The identity graph and traits one batch touches: read once, written through."""

    def __init__(
        self,
        tx: StoreTx,
        identifiers: Sequence[Identifier],
        now: float,
        survivorship: Survivorship,
        traits_of: Iterable[Identifier],
    ) -> None:
        """``traits_of``: the identifiers whose profiles' traits are read up front (the
        profiles of the batch's events that carry traits). Any other profile's traits
        are read when first needed."""
        self.tx = tx
        self.survivorship = survivorship
        self.now = now
        wanted = sorted(set(identifiers))
        tx.lock_identifiers(wanted)
        found = tx.lookup(wanted) if wanted else {}
        if not tx.single_writer:
            for _ in range(MAX_LOCK_ROUNDS):
                tx.lock_profiles(sorted(set(found.values())))
                again = tx.lookup(wanted) if wanted else {}
                if again == found:
                    break
                found = again
            else:
                raise Conflict("identity links kept changing while locking")
        self.owners: dict[Identifier, str] = found
        self._members: dict[str, set[Identifier]] = {}
        self._members_loaded = False
        first = {pid for i in traits_of if (pid := found.get(i)) is not None}
        self.traits: dict[str, dict[str, Trait]] = tx.traits(first) if first else {}
        self.dirty: dict[str, set[str]] = {}
        self.timeline: dict[str, list[TimelineEntry]] = {}
        self.redirect: dict[str, str] = {}

    # -- the Graph protocol of the resolver --------------------------------

    def owner(self, identifier: Identifier) -> str | None:
        return self.owners.get(identifier)

    def members(self, profile_ids: Iterable[str]) -> dict[str, set[Identifier]]:
        profile_ids = list(profile_ids)
        missing = [p for p in profile_ids if p not in self._members]
        if missing and not self._members_loaded:
            # the first time anything is needed, read every profile the batch touches:
            # one round trip per batch rather than one per event
            self._members_loaded = True
            missing = list({*missing, *(p for p in set(self.owners.values())
                                        if p not in self._members)})
        if missing:
            for pid, idents in self.tx.identifiers_of(missing).items():
                self._members[pid] = set(idents)
        return {p: self._members[p] for p in profile_ids}

    def create(
        self, profile_id: str, identifiers: Sequence[Identifier], event_uid: str, source: str
    ) -> None:
        self.tx.create_profile(profile_id, self.now)
        self.traits[profile_id] = {}
        self._members[profile_id] = set()
        if identifiers:
            self.link(profile_id, identifiers, event_uid, source)

    def link(
        self, profile_id: str, identifiers: Sequence[Identifier], event_uid: str, source: str
    ) -> None:
        self.tx.link(profile_id, identifiers, event_uid, self.now, source)
        for ident in identifiers:
            self.owners[ident] = profile_id
        if profile_id in self._members:
            self._members[profile_id].update(identifiers)

    def merge(self, into: str, merged: Sequence[str], event_uid: str) -> None:
        """Merge profiles; their traits combine by survivorship."""
        self._read_traits([into, *merged])
        before = [self.profile_traits(p) for p in [into, *merged]]
        combined = self.survivorship.combine(before)
        self.tx.merge(into, merged, event_uid, self.now, "deterministic")
        moved = self.members([into, *merged])
        for pid in merged:
            for ident in moved[pid]:
                self.owners[ident] = into
            self._members[into] |= moved.pop(pid)
            self._members.pop(pid, None)
            self.redirect[pid] = into
            for old, target in list(self.redirect.items()):
                if target == pid:
                    self.redirect[old] = into
            entries = self.timeline.pop(pid, None)
            if entries:
                self.timeline.setdefault(into, []).extend(entries)
            self.dirty.pop(pid, None)
            self.traits.pop(pid, None)
        self.set_traits(into, {n: t for n, t in combined.items() if before[0].get(n) is not t})

    # -- traits and timeline, written at the end of the batch ---------------

    def _read_traits(self, profile_ids: Sequence[str]) -> None:
        """Read, in one round trip, the traits of those profiles not read yet."""
        missing = [p for p in dict.fromkeys(profile_ids) if p not in self.traits]
        if missing:
            self.traits.update(self.tx.traits(missing))

    def profile_traits(self, profile_id: str) -> dict[str, Trait]:
        traits = self.traits.get(profile_id)
        if traits is None:
            traits = self.traits[profile_id] = self.tx.traits([profile_id])[profile_id]
        return traits

    def set_traits(self, profile_id: str, traits: dict[str, Trait]) -> None:
        self.profile_traits(profile_id).update(traits)
        self.dirty.setdefault(profile_id, set()).update(traits)

    def flush(self) -> None:
        merged_away = list(self.redirect)
        if merged_away:
            self.tx.delete_traits(merged_away)
        for pid, names in self.dirty.items():
            traits = self.traits[pid]
            self.tx.put_traits(pid, {n: traits[n] for n in names})
        for pid, entries in self.timeline.items():
            self.tx.append_timeline(pid, entries, self.now)


class ProfileProcessor:
    """Applies events to the store. Pure domain logic over the store contract."""

    def __init__(self, config: TesseraConfig, store: Store) -> None:
        self.store = store
        self.resolver = IdentityResolver(config)
        self.survivorship = Survivorship(config)
        self.traits = TraitExtractor(config)
        self.screen: Callable[[list[Event]], list[Event]] | None = None
        """Drops or anonymizes events that carry erased identifiers (set by the runtime)."""

    def apply(self, events: Sequence[Event], retries: int = 8) -> BatchResult:
        # What depends on the event alone is worked out before the transaction: not
        # while holding its locks (which other workers may be waiting for), and once
        # however often a conflict makes the transaction run again.
        ready = {id(e): self._prepare(e) for e in events}
        return in_transaction(self.store, lambda tx: self._apply(tx, events, ready), retries)

    def _prepare(self, event: Event) -> tuple[dict[str, Any], dict[str, Any]]:
        """The event's traits (by the extraction rules) and its timeline form."""
        return self.traits.extract(event), event.to_cloudevent()

    def _apply(
        self,
        tx: StoreTx,
        events: Sequence[Event],
        ready: dict[int, tuple[dict[str, Any], dict[str, Any]]],
    ) -> BatchResult:
        result = BatchResult()
        now = time.time()
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.uid, event)
        already = tx.applied(list(unique))
        fresh = [e for uid, e in unique.items() if uid not in already]
        result.duplicates = len(events) - len(fresh)
        if self.screen is not None:  # erased identifiers (tessera.privacy.suppression)
            fresh = self.screen(fresh)
        work: list[tuple[Event, dict[str, Any], dict[str, Any]]] = []
        identifiers: list[Identifier] = []
        traits_of: list[Identifier] = []
        for event in fresh:
            # an event the screen anonymized is a new object: prepared here
            new_traits, cloudevent = ready.get(id(event)) or self._prepare(event)
            work.append((event, new_traits, cloudevent))
            start = len(identifiers)
            for type_, value in event.identifiers:
                if type_ == "previous_id":
                    identifiers += [("user_id", value), ("anonymous_id", value)]
                else:
                    identifiers.append((type_, value))
            if new_traits:
                traits_of += identifiers[start:]
        graph = BatchGraph(tx, identifiers, now, self.survivorship, traits_of)
        for event, new_traits, cloudevent in work:
            self._apply_one(graph, event, now, result, new_traits, cloudevent)
        graph.flush()
        tx.mark_applied([e.uid for e in fresh], now)
        if result.derived:
            tx.add_outbox(
                [(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json()) for d in result.derived]
            )
        result.applied = len(fresh)
        return result

    def _apply_one(
        self,
        graph: BatchGraph,
        event: Event,
        now: float,
        result: BatchResult,
        new_traits: dict[str, Any],
        cloudevent: dict[str, Any],
    ) -> None:
        resolution = self.resolver.resolve(graph, event.identifiers, event.uid, event.source_name)
        if resolution is None:
            result.unattributed += 1
            return
        pid = resolution.profile_id
        result.profiles_created += resolution.created
        if resolution.merged:
            result.merges += 1
            result.derived.append(self._merged_event(event, pid, resolution.merged, now))
        if new_traits:
            current = graph.profile_traits(pid)
            changed: dict[str, Trait] = {}
            diff: dict[str, Any] = {}
            source = event.source_name
            for name, value in new_traits.items():
                candidate = Trait(
                    value, source, event.time, self.survivorship.priority(name, source), event.uid
                )
                old = current.get(name)
                if self.survivorship.wins(candidate, old):
                    changed[name] = candidate
                    if old is None or old.value != value:
                        diff[name] = {"old": None if old is None else old.value, "new": value}
            if changed:
                graph.set_traits(pid, changed)
            if diff:
                result.derived.append(self._updated_event(event, pid, diff, now))
        graph.timeline.setdefault(pid, []).append(
            TimelineEntry(
                event_uid=event.uid,
                type=event.type,
                source=event.source_name,
                time=event.time,
                received_at=event.received_at,
                event=cloudevent,
            )
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
    return Event.from_json(payload)


__all__ = ["DERIVED_TOPIC", "BatchResult", "ProfileProcessor", "decode", "event_uid"]
