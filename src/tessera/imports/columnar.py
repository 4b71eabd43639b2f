"""The columnar import path: profile rows kept as columns from the file to the store.

For ``kind: profiles`` CSV imports applied ``direct`` without the log. A block of
plain CSV lines arrives as columns (:func:`.readers.read_csv_blocks`, pyarrow);
each row's identifiers are normalized by the extractor and its traits converted
by the mapping (the same calls the row path makes), and a row that cannot be
mapped that way, or that the reader could not take as columns, becomes a
:class:`.readers.Record` for :meth:`ImportJob.to_event` (its event, or its reject
reason, is then exactly the row path's).

Rows that can only create a new person (:meth:`ColumnarApplier.apply`, the rule of
:mod:`.bulk`) are written without an :class:`Event` or any object per row: their
event uids, profile ids, CloudEvent documents, trait values and ``profile.updated``
payloads are built as lists, and :meth:`StoreTx.create_profile_columns` writes them
(SQLite: one ``INSERT ... SELECT`` per table). Every other row becomes the event the
row path would have made and goes through :meth:`ProfileProcessor.apply` after the
commit, in file order, as in :mod:`.bulk`. The store ends up with the same content;
``tests/imports/test_bulk.py`` compares the three paths.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tessera.events.envelope import Event, iso_time
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC, BatchResult, ProfileProcessor
from tessera.store.base import Conflict, Identifier, ProfileColumns, StoreTx

_UPDATED_UID_SOURCE = f"tessera\x1f{DERIVED_SOURCE}\x1f".encode()


@dataclass(slots=True)
class Rows:
    """Mapped rows of one chunk, column-wise: row ``i`` is line ``lines[i]``."""

    lines: list[int] = field(default_factory=list)
    identifiers: list[list[Identifier]] = field(default_factory=list)
    """Per row, in the mapping's order (the order of ``data.identifiers``)."""
    traits: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Chunk:
    """One chunk of an import: rows mapped column-wise and events made by the row path."""

    rows: Rows
    events: list[Event]
    """Rows the row path mapped (not plain CSV, or a value only it handles)."""
    received_at: float
    order: list[tuple[int, int]] = field(default_factory=list)
    """(line, index): ``index >= 0`` a row of ``rows``, ``-1 - k`` event ``k``."""


class ColumnarApplier:
    """Applies chunks: new people column-wise in one transaction, the rest per event."""

    def __init__(self, processor: ProfileProcessor, source: str, import_source: str,
                 id_prefix: str, event_type: str,
                 make_event: Callable[[int, list[Identifier], dict[str, Any], float, float],
                                      Event]) -> None:
        self.processor = processor
        self.store = processor.store
        self.source = source
        self.import_source = import_source
        self.id_prefix = id_prefix
        """Event ids are ``<id_prefix><line>`` (the import id and a colon)."""
        self.event_type = event_type
        self.make_event = make_event
        self.created = 0
        self._uid_key = f"{source}\x1f{import_source}\x1f{id_prefix}".encode()
        self._times: dict[float, str] = {}
        self._ids = 0

    # -- per-row values built in bulk -------------------------------------------------

    def uids(self, lines: Sequence[int]) -> list[str]:
        """``event_uid(source, import source, f"{import id}:{line}")`` for every line."""
        key, blake = self._uid_key, hashlib.blake2b
        return [blake(key + str(n).encode(), digest_size=16).hexdigest() for n in lines]

    def profile_ids(self, n: int) -> list[str]:
        """``prf_`` and 32 hex digits, as the resolver's ids, but rising: a millisecond
        clock, 40 random bits per chunk and a counter. New rows then go to the end of
        every index keyed by profile id instead of to random pages."""
        head = f"prf_{time.time_ns() // 1_000_000:012x}{int.from_bytes(os.urandom(5)):010x}"
        return [f"{head}{i:010x}" for i in range(n)]

    def _iso(self, ts: float) -> str:
        found = self._times.get(ts)
        if found is None:
            if len(self._times) > 10_000:
                self._times.clear()
            found = self._times[ts] = iso_time(ts)
        return found

    # -- applying ---------------------------------------------------------------------

    def apply(self, chunk: Chunk, retries: int = 8) -> BatchResult:
        for attempt in range(retries + 1):
            try:
                with self.store.transaction() as tx:
                    result, rest = self._bulk(tx, chunk)
                break
            except Conflict:
                if attempt == retries:
                    raise
                time.sleep(0.005 * (2**attempt))
        self.created += result.profiles_created
        if rest:
            more = self.processor.apply(rest)
            result.applied += more.applied
            result.duplicates += more.duplicates
            result.unattributed += more.unattributed
            result.profiles_created += more.profiles_created
            result.merges += more.merges
            result.derived += more.derived
        return result

    def _bulk(self, tx: StoreTx, chunk: Chunk) -> tuple[BatchResult, list[Event]]:
        rows, events = chunk.rows, chunk.events
        result = BatchResult()
        uids = self.uids(rows.lines)
        already = tx.applied([*uids, *(e.uid for e in events)])
        # the bulk rule of tessera.imports.bulk: no identifier shared with another fresh
        # row of the chunk (per-event rows count too), one value per type, nothing known
        seen: dict[Identifier, int] = {}
        for uid, idents in zip(uids, rows.identifiers, strict=True):
            if uid not in already:
                for ident in idents:
                    seen[ident] = seen.get(ident, 0) + 1
        for event in events:
            if event.uid in already:
                continue
            for type_, value in event.identifiers:
                if type_ == "previous_id":
                    for expanded in (("user_id", value), ("anonymous_id", value)):
                        seen[expanded] = seen.get(expanded, 0) + 2
                else:
                    seen[(type_, value)] = seen.get((type_, value), 0) + 1
        clean: list[int] = []
        for i, idents in enumerate(rows.identifiers):
            if uids[i] in already or any(seen[ident] > 1 for ident in idents):
                continue
            if len({t for t, _ in idents}) == len(idents):
                clean.append(i)
        if clean:
            wanted = sorted({ident for i in clean for ident in rows.identifiers[i]})
            tx.lock_identifiers(wanted)
            known = tx.lookup(wanted)
            if known:
                clean = [i for i in clean if not any(x in known for x in rows.identifiers[i])]
        if self.processor.screen is not None and clean:
            stubs: dict[int, int] = {}
            probes: list[Event] = []
            for i in clean:
                stub = self._stub(rows, i, uids[i], chunk.received_at)
                stubs[id(stub)] = i
                probes.append(stub)
            kept = {stubs[id(e)] for e in self.processor.screen(probes) if id(e) in stubs}
            clean = [i for i in clean if i in kept]  # dropped or anonymized: per event
        chosen = set(clean)
        rest: list[Event] = []
        for line, index in chunk.order:
            if index >= 0:
                if index in chosen:
                    continue
                if uids[index] in already:
                    result.duplicates += 1
                    continue
                rest.append(self.make_event(line, rows.identifiers[index], rows.traits[index],
                                            rows.times[index], chunk.received_at))
            else:
                rest.append(events[-1 - index])
        if clean:
            self._write(tx, rows, clean, uids, chunk.received_at)
        result.applied = result.profiles_created = len(clean)
        return result, rest

    def _stub(self, rows: Rows, i: int, uid: str, received_at: float) -> Event:
        """An event with the row's identifiers, enough for the erasure screen to judge."""
        return Event(id=f"{self.id_prefix}{rows.lines[i]}", source=self.import_source,
                     type=self.event_type, time=rows.times[i], received_at=received_at,
                     source_name=self.source, identifiers=list(rows.identifiers[i]), uid=uid)

    def _write(self, tx: StoreTx, rows: Rows, clean: list[int], all_uids: list[str],
               received_at: float) -> None:
        processor = self.processor
        priority = processor.survivorship.priority
        sort = processor.resolver.sort
        now = time.time()
        source, etype = self.source, self.event_type
        ids = self.profile_ids(len(clean))
        uids = [all_uids[i] for i in clean]
        times = [rows.times[i] for i in clean]
        received = self._iso(received_at)
        dumps = orjson.dumps
        prios: dict[str, int] = {}
        link_rows: list[int] = []
        link_types: list[str] = []
        link_values: list[str] = []
        trait_rows: list[int] = []
        trait_names: list[str] = []
        trait_values: list[str] = []
        trait_prios: list[int] = []
        documents: list[str] = []
        outbox: list[tuple[str, str, str, bytes]] = []
        blake = hashlib.blake2b
        for r, i in enumerate(clean):
            idents = rows.identifiers[i]
            traits = rows.traits[i]
            line = rows.lines[i]
            uid = uids[r]
            pid = ids[r]
            event_id = f"{self.id_prefix}{line}"
            iso = self._iso(times[r])
            for type_, value in sort(idents):
                link_rows.append(r)
                link_types.append(type_)
                link_values.append(value)
            for name, value in traits.items():
                prio = prios.get(name)
                if prio is None:
                    prio = prios[name] = priority(name, source)
                trait_rows.append(r)
                trait_names.append(name)
                trait_values.append(dumps(value).decode())  # see ProfileColumns
                trait_prios.append(prio)
            documents.append(dumps({  # decoded: see ProfileColumns
                "specversion": "1.0", "id": event_id, "source": self.import_source,
                "type": etype, "time": iso, "datacontenttype": "application/json",
                "data": {"traits": traits, "identifiers": dict(idents)},
                "tesserasource": source, "tesserareceivedat": received}).decode())
            if traits:
                # ProfileProcessor._updated_event, serialized as orjson serializes an Event
                updated_id = f"{uid}:profile.updated"
                updated_uid = blake(_UPDATED_UID_SOURCE + updated_id.encode(),
                                    digest_size=16).hexdigest()
                outbox.append((DERIVED_TOPIC, updated_uid, f"profile_id:{pid}", dumps({
                    "id": updated_id, "source": DERIVED_SOURCE, "type": "profile.updated",
                    "time": times[r], "received_at": now, "source_name": "tessera",
                    "data": {"profile_id": pid,
                             "changed": {n: {"old": None, "new": v} for n, v in traits.items()},
                             "caused_by": {"id": event_id, "source": self.import_source,
                                           "uid": uid, "type": etype}},
                    "identifiers": [["profile_id", pid]], "subject": pid,
                    "datacontenttype": "application/json", "dataschema": None,
                    "extensions": {}, "specversion": "1.0", "uid": updated_uid,
                }).decode().encode()))  # a compact copy: see ProfileColumns
        tx.create_profile_columns(ProfileColumns(
            source=source, ids=ids, event_uids=uids, types=[etype] * len(clean), times=times,
            received_at=[received_at] * len(clean), documents=documents, link_rows=link_rows,
            link_types=link_types, link_values=link_values, trait_rows=trait_rows,
            trait_names=trait_names, trait_values=trait_values,
            trait_priorities=trait_prios), now)
        tx.mark_applied(uids, now)
        if outbox:
            tx.add_outbox(outbox)
