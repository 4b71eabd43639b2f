"""The bulk path of imports: new people created set-based, everything else per event.

Most rows of a first import describe somebody the store has never seen: none
of their identifiers is known and no other row of the chunk shares one. For
such a row the per-event processor would create a profile, link every
identifier, set every trait (nothing to compete with) and add one timeline
entry, and emit a ``profile.updated``. This module does exactly that for all
such rows of a chunk at once: one lookup of the chunk's identifiers, then one
statement per table (:meth:`StoreTx.create_profiles`), the applied records and
the derived events, in one transaction.

Every other row (an identifier already in the store or shared with another row
of the chunk, more values of a type than its limit allows, an alias's
``previous_id``, a row the erasure screen drops or anonymizes) goes through
:meth:`ProfileProcessor.apply` afterwards, in file order, the code the worker
runs. Those rows share no identifier with the bulk ones, so applying them
after the bulk rows gives the store the same content as applying the chunk
row by row. Exactly-once holds as for the processor: the bulk rows are marked
applied in their transaction, and a chunk applied again finds them applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from tessera.events.envelope import Event, IsoTimes
from tessera.identity.resolver import new_profile_id
from tessera.processing.profiles import DERIVED_TOPIC, BatchResult, ProfileProcessor
from tessera.store.base import Identifier, NewProfile, StoreTx, TimelineEntry, Trait, in_transaction


def count_identifiers(events: Iterable[Event], seen: dict[Identifier, int]) -> None:
    """Add to ``seen`` how often each identifier of ``events`` occurs; an alias
    (``previous_id``) counts twice for each id it may stand for, so that no row sharing
    one with it is taken for a new person."""
    for event in events:
        for type_, value in event.identifiers:
            if type_ == "previous_id":
                for expanded in (("user_id", value), ("anonymous_id", value)):
                    seen[expanded] = seen.get(expanded, 0) + 2
            else:
                seen[(type_, value)] = seen.get((type_, value), 0) + 1


class BulkApplier:
    """Applies a chunk of import events with the bulk path where it gives the same result."""

    def __init__(self, processor: ProfileProcessor) -> None:
        self.processor = processor
        self.store = processor.store
        self._iso = IsoTimes()
        self.created = 0
        """Profiles this applier created with the bulk path (the rest went per event)."""

    def apply(self, events: Sequence[Event], retries: int = 8) -> BatchResult:
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.uid, event)
        result, rest = in_transaction(self.store,
                                      lambda tx: self._bulk(tx, list(unique.values())), retries)
        self.created += result.profiles_created
        result.duplicates += len(events) - len(unique)
        if rest:
            result.add(self.processor.apply(rest))
        return result

    # -- the bulk part, inside one transaction ------------------------------------------

    def _bulk(self, tx: StoreTx, events: list[Event]) -> tuple[BatchResult, list[Event]]:
        result = BatchResult()
        already = tx.applied([e.uid for e in events])
        fresh = [e for e in events if e.uid not in already]
        result.duplicates = len(events) - len(fresh)
        clean = self._candidates(fresh)
        if clean:
            wanted = sorted({i for e in clean for i in e.identifiers})
            tx.lock_identifiers(wanted)
            known = tx.lookup(wanted)
            if known:
                clean = [e for e in clean if not any(i in known for i in e.identifiers)]
        if self.processor.screen is not None and clean:
            kept = {id(e) for e in self.processor.screen(list(clean))}
            clean = [e for e in clean if id(e) in kept]  # dropped or anonymized: per event
        chosen = {e.uid for e in clean}
        rest = [e for e in fresh if e.uid not in chosen]
        if not clean:
            return result, rest
        now = time.time()
        made, derived = self._profiles(clean, now)
        tx.create_profiles(made, now)
        tx.mark_applied([e.uid for e in clean], now)
        if derived:
            tx.add_outbox([(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json()) for d in derived])
        result.applied = result.profiles_created = len(clean)
        result.derived = derived
        return result, rest

    def _candidates(self, fresh: list[Event]) -> list[Event]:
        """Rows that can only create a new person: no identifier shared within the chunk,
        one value per identifier type (so no limit applies), no alias to expand."""
        seen: dict[Identifier, int] = {}
        count_identifiers(fresh, seen)
        out: list[Event] = []
        for event in fresh:
            idents = event.identifiers
            if not idents or any(seen[i] > 1 for i in idents if i[0] != "previous_id"):
                continue
            types = {t for t, _ in idents}
            if len(types) == len(idents) and "previous_id" not in types:
                out.append(event)
        return out

    def _profiles(self, events: list[Event], now: float) -> tuple[list[NewProfile], list[Event]]:
        processor = self.processor
        priority = processor.survivorship.priority
        extract = processor.traits.extract
        sort = processor.resolver.sort
        made: list[NewProfile] = []
        derived: list[Event] = []
        for event in events:
            pid = new_profile_id()
            source = event.source_name
            traits = {name: Trait(value, source, event.time, priority(name, source), event.uid)
                      for name, value in extract(event).items()}
            made.append(NewProfile(pid, sort(event.identifiers), event.uid, source, traits,
                                   TimelineEntry(event.uid, event.type, source, event.time,
                                                 event.received_at, self._cloudevent(event))))
            if traits:
                diff = {n: {"old": None, "new": t.value} for n, t in traits.items()}
                derived.append(processor._updated_event(event, pid, diff, now))
        return made, derived

    def _cloudevent(self, event: Event) -> dict[str, Any]:
        """``event.to_cloudevent()``, with the times of a chunk (mostly one or two) formatted
        once: an import's rows share their receive time and, without a time column, their
        event time."""
        out: dict[str, Any] = {"specversion": event.specversion, "id": event.id,
                               "source": event.source, "type": event.type,
                               "time": self._iso(event.time)}
        if event.subject is not None:
            out["subject"] = event.subject
        if event.datacontenttype is not None:
            out["datacontenttype"] = event.datacontenttype
        if event.dataschema is not None:
            out["dataschema"] = event.dataschema
        out.update(event.extensions)
        out["data"] = event.data
        out["tesserasource"] = event.source_name
        out["tesserareceivedat"] = self._iso(event.received_at)
        return out
