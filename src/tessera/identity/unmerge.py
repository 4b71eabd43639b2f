"""Undo probabilistic merges: split a profile back apart and re-derive its traits.

A probabilistic merge is recorded in the store as a merge whose reason starts
with ``probabilistic`` and, in the review store, with the identifiers each side
held at that moment (the link provenance). To undo it, those identifiers'
links move back to the merged profile (revived under its old id), and so do
the timeline events that carry them (each event's identifiers are read back
from the event itself). Then both profiles' traits are re-derived by replaying
their events in event-time order through the same trait extraction and
survivorship as the processor. Traits no event explains (set by the warehouse,
say) stay with the surviving profile. The pair is remembered as rejected, so
matching never merges it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tessera.config import TesseraConfig
from tessera.events.envelope import Event, iso_time
from tessera.identity.extract import IdentifierExtractor
from tessera.identity.review import ReviewStore
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC
from tessera.profiles.survivorship import Survivorship
from tessera.profiles.traits import TraitExtractor
from tessera.store.base import Identifier, Store, TimelineEntry, Trait

MAX_TIMELINE = 1_000_000


class UnmergeError(Exception):
    pass


@dataclass(slots=True)
class UnmergeResult:
    profile_id: str
    split_off: list[str] = field(default_factory=list)
    moved_identifiers: int = 0
    moved_events: int = 0


def full_timeline(store: Store, profile_id: str, page: int = 1000) -> list[TimelineEntry]:
    out: list[TimelineEntry] = []
    before: tuple[float, str] | None = None
    for _ in range(MAX_TIMELINE // page):
        entries = store.timeline(profile_id, page, before)
        out.extend(entries)
        if len(entries) < page:
            break
        before = (entries[-1].time, entries[-1].event_uid)
    out.reverse()  # oldest first
    return out


class Unmerger:
    def __init__(self, config: TesseraConfig, store: Store, review: ReviewStore) -> None:
        self.store = store
        self.review = review
        self.extractor = IdentifierExtractor(config)
        self.traits = TraitExtractor(config)
        self.survivorship = Survivorship(config)

    def event_identifiers(self, entry: TimelineEntry) -> set[Identifier]:
        ev = entry.event
        found = set(self.extractor.extract({"data": ev.get("data"), "subject": ev.get("subject")}))
        data = ev.get("data")
        if isinstance(data, dict) and isinstance(data.get("identifiers"), dict):  # imports
            for type_, value in data["identifiers"].items():
                if isinstance(value, str):
                    found.add((type_, value))
        return found

    def derive_traits(self, entries: Iterable[TimelineEntry]) -> dict[str, Trait]:
        out: dict[str, Trait] = {}
        for entry in sorted(entries, key=lambda e: (e.time, e.event_uid)):
            event = self._event(entry)
            for name, value in self.traits.extract(event).items():
                candidate = Trait(value, entry.source, entry.time,
                                  self.survivorship.priority(name, entry.source), entry.event_uid)
                if self.survivorship.wins(candidate, out.get(name)):
                    out[name] = candidate
        return out

    @staticmethod
    def _event(entry: TimelineEntry) -> Event:
        ev = entry.event
        extensions = {k: v for k, v in ev.items() if k not in {
            "specversion", "id", "source", "type", "time", "data", "subject", "datacontenttype",
            "dataschema", "tesserasource", "tesserareceivedat"}}
        return Event(id=str(ev.get("id")), source=str(ev.get("source")), type=entry.type,
                     time=entry.time, received_at=entry.received_at, source_name=entry.source,
                     data=ev.get("data"), subject=ev.get("subject"), extensions=extensions,
                     uid=entry.event_uid)

    def unmerge(self, identifier: str, merged: str | None = None, by: str = "cli"
                ) -> UnmergeResult:
        pid = self.store.resolve(identifier)
        profile = self.store.get_profile(pid) if pid else None
        if profile is None or pid is None:
            raise UnmergeError(f"no profile {identifier!r}")
        records = [m for m in profile.merged_from if m.reason.startswith("probabilistic")
                   and (merged is None or m.merged == merged)]
        if not records:
            raise UnmergeError(
                f"profile {pid} has no probabilistic merge{f' of {merged}' if merged else ''} "
                f"to undo (deterministic merges follow from shared identifiers and would "
                f"happen again)")
        result = UnmergeResult(pid)
        for record in reversed(records):  # newest first
            self._split(pid, record.merged, by, result)
        self.review.record_unmerge(pid, result.split_off, by)
        return result

    def _provenance(self, pid: str, other: str) -> tuple[str, str, set[Identifier]]:
        """Where ``other``'s identifiers are now, the pair that merged it, and those ids.

        Usually the pair (pid, other) itself. After a chain (``other`` merged into B,
        B later into ``pid``) the store names ``pid`` while the review store knows
        (B, other); and if B was split off first, B holds ``other``'s identifiers
        again. So the profile to split from is the one holding them now."""
        side = set(self.review.held(other, pid))
        if side:
            return pid, pid, side
        for partner, held in self.review.merged_into_others(other):
            holders = {self.store.resolve(f"{t}:{v}") for t, v in held}
            if len(holders) == 1 and (holder := holders.pop()) is not None:
                return holder, partner, set(held)
        return pid, pid, set()

    def _split(self, pid: str, other: str, by: str, result: UnmergeResult) -> None:
        pid, partner, side = self._provenance(pid, other)
        profile = self.store.get_profile(pid)
        if profile is None:
            raise UnmergeError(f"profile {pid} disappeared during the unmerge")
        linked = {(i.type, i.value) for i in profile.identities}
        side &= linked
        if not side or side == linked:
            raise UnmergeError(f"the provenance of the merge of {other} into {pid} is unknown")
        entries = full_timeline(self.store, pid)
        theirs_entries = []
        for entry in entries:
            ids = self.event_identifiers(entry)
            if ids & side and not ids & (linked - side):
                theirs_entries.append(entry)
        # identifiers linked later by an event of theirs also go back
        moved_uids = {e.event_uid for e in theirs_entries}
        for link in profile.identities:
            if link.event_uid in moved_uids:
                side.add((link.type, link.value))
        mine_entries = [e for e in entries if e.event_uid not in moved_uids]
        now = time.time()
        with self.store.transaction() as tx:
            tx.lock_identifiers(sorted(linked))
            tx.lock_profiles(sorted([pid, other]))
            current = tx.traits([pid])[pid]
            event_uids = {e.event_uid for e in entries}
            kept = {n: t for n, t in current.items() if t.event_uid not in event_uids}
            tx.split(pid, other, sorted(side), sorted(moved_uids), now)
            tx.delete_traits([pid, other])
            tx.put_traits(pid, {**self.derive_traits(mine_entries), **kept})
            tx.put_traits(other, self.derive_traits(theirs_entries))
            event = unmerged_event(pid, other, now)
            tx.add_outbox([(DERIVED_TOPIC, event.uid, event.partition_key, event.to_json())])
        for a in dict.fromkeys((pid, partner)):  # the pair that merged it, and the one now
            pair = self.review.get(a, other)
            if pair is not None or a == partner:
                self.review.record(a, other, pair.score if pair else 0.0, "rejected", by,
                                   note="unmerged")
        result.split_off.append(other)
        result.moved_identifiers += len(side)
        result.moved_events += len(moved_uids)


def unmerged_event(pid: str, other: str, now: float) -> Event:
    return Event(
        id=f"{pid}:{other}:{now}:identity.unmerged", source=DERIVED_SOURCE,
        type="identity.unmerged", time=now, received_at=now, source_name="tessera",
        data={"profile_id": pid, "split_profile_ids": [other], "reason": "unmerge",
              "at": iso_time(now)},
        identifiers=[("profile_id", pid)], subject=pid, datacontenttype="application/json")


__all__ = ["UnmergeError", "UnmergeResult", "Unmerger"]
