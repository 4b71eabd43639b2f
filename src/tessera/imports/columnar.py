"""The columnar import path: profile rows kept as columns from the file to the store.

For ``kind: profiles`` CSV imports applied ``direct`` without the log. A block of
plain CSV lines arrives as columns (:func:`.readers.read_csv_blocks`, pyarrow);
each row's identifiers are normalized by the extractor and its traits converted
by the mapping (the same calls the row path makes), and a row that cannot be
mapped that way, or that the reader could not take as columns, becomes a
:class:`.readers.Record` for :meth:`ImportJob.to_event` (its event, or its reject
reason, is then exactly the row path's).

Rows that can only create a new person (:meth:`ColumnarApplier.prepare`, the rule of
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
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import itemgetter
from typing import Any

import orjson

from tessera.events.envelope import Event, IsoTimes, event_uid
from tessera.identity.resolver import new_profile_ids
from tessera.imports.bulk import count_identifiers
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC, BatchResult, ProfileProcessor
from tessera.store.base import Identifier, ProfileColumns, StoreTx, in_transaction

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
        self.uid_prefix: str | None = None
        """Set by the job: row uids are this and the line in 16 hex digits
        (:func:`.job.import_uid`); None: the hash of (source, import source, event id)."""
        self._iso = IsoTimes()

    # -- per-row values built in bulk -------------------------------------------------

    def uids(self, lines: Sequence[int]) -> list[str]:
        """The event uid of every line: :func:`.job.import_uid`, or for an import begun by
        an earlier version ``event_uid(source, import source, f"{import id}:{line}")``."""
        if self.uid_prefix is not None:
            prefix = self.uid_prefix
            return [f"{prefix}{n:016x}" for n in lines]
        source, import_source, id_prefix = self.source, self.import_source, self.id_prefix
        return [event_uid(source, import_source, f"{id_prefix}{n}") for n in lines]

    # -- applying ---------------------------------------------------------------------

    def prepare(self, chunk: Chunk) -> Prepared:
        """Everything about the chunk that does not depend on the store: which rows can
        only create a new person if the store knows none of their identifiers (the rule
        of :mod:`.bulk`: no identifier shared with another row of the chunk, one value
        per type), and their profiles, documents and ``profile.updated`` payloads. The
        import prepares the next chunk while the store writes this one."""
        rows, events = chunk.rows, chunk.events
        uids = self.uids(rows.lines)
        # counted and tested column-wise (map, compress): no Python loop per row
        seen: dict[Identifier, int] = Counter(chain.from_iterable(rows.identifiers))
        count_identifiers(events, seen)  # the rows that went through to_event
        one_per_type = map(int.__eq__, map(len, rows.identifiers),
                           map(len, map(dict, rows.identifiers)))
        if seen and max(seen.values()) > 1:
            shared = {x for x, k in seen.items() if k > 1}
            flags: Iterable[bool] = map(bool.__and__, one_per_type,
                                        map(shared.isdisjoint, rows.identifiers))
        else:
            flags = one_per_type
        candidates = list(compress(range(len(rows.identifiers)), flags))
        prepared = Prepared(chunk, uids, candidates)
        if candidates:
            self._build(prepared)
        return prepared

    def commit(self, prepared: Prepared, retries: int = 8) -> BatchResult:
        """Write the prepared rows the store does not contradict (applied already, an
        identifier known, erased) in one transaction; then the rest per event."""
        result, rest = in_transaction(self.store, lambda tx: self._commit(tx, prepared),
                                      retries)
        self.created += result.profiles_created
        if rest:
            result.add(self.processor.apply(rest))
        return result

    def _commit(self, tx: StoreTx, prepared: Prepared) -> tuple[BatchResult, list[Event]]:
        chunk, uids, candidates = prepared.chunk, prepared.uids, prepared.candidates
        rows, events = chunk.rows, chunk.events
        result = BatchResult()
        already = tx.applied(uids)  # the row path's events: the processor looks them up
        keep = [k for k, i in enumerate(candidates) if uids[i] not in already]
        if keep:
            wanted = [x for k in keep for x in rows.identifiers[candidates[k]]]  # unique
            if not tx.single_writer:  # locks are taken in one order (no deadlock)
                wanted.sort()
                tx.lock_identifiers(wanted)
            known = tx.lookup(wanted)
            if known:
                keep = [k for k in keep
                        if not any(x in known for x in rows.identifiers[candidates[k]])]
        screen = self.processor.screen
        if screen is not None and keep:
            # the screen hands back the very list it got when nobody is erased: then no
            # row needs a stub event of its own
            probe = [self._stub(prepared, keep[0])]
            if screen(probe) is not probe:
                stubs = {k: self._stub(prepared, k) for k in keep}
                kept = {id(e) for e in screen(list(stubs.values()))}
                keep = [k for k in keep if id(stubs[k]) in kept]  # dropped or anonymized:
                #                                                   per event
        chosen = {candidates[k] for k in keep}
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
        if keep:
            columns, outbox = prepared.columns, prepared.outbox
            if len(keep) < len(candidates):
                columns, outbox = _subset(columns, outbox, keep)
            now = time.time()
            tx.create_profile_columns(columns, now)
            tx.mark_applied(columns.event_uids, now)
            messages = [m for m in outbox if m is not None]
            if messages:
                tx.add_outbox(messages)
        result.applied = result.profiles_created = len(keep)
        return result, rest

    def _stub(self, prepared: Prepared, k: int) -> Event:
        """Candidate ``k`` as an event with its identifiers: what the erasure screen reads."""
        rows, i = prepared.chunk.rows, prepared.candidates[k]
        return Event(id=f"{self.id_prefix}{rows.lines[i]}", source=self.import_source,
                     type=self.event_type, time=rows.times[i],
                     received_at=prepared.chunk.received_at, source_name=self.source,
                     identifiers=list(rows.identifiers[i]), uid=prepared.uids[i])

    def _build(self, prepared: Prepared) -> None:
        """The candidates' columns and outbox messages.

        The CloudEvent document and the ``profile.updated`` payload are assembled from
        text pieces around the one part that needs serializing (the row's data, the
        changed values): the same JSON as ``orjson.dumps`` of ``Event.to_cloudevent()``
        and of the processor's ``_updated_event`` (``tests/imports/test_columnar.py``
        holds them equal), at a fraction of the cost per row.
        """
        rows, candidates, received_at = (prepared.chunk.rows, prepared.candidates,
                                         prepared.chunk.received_at)
        processor = self.processor
        priority = processor.survivorship.priority
        sort = processor.resolver.sort
        now = time.time()
        source, etype = self.source, self.event_type

        def q(text: str) -> str:
            return orjson.dumps(text).decode()

        ids = new_profile_ids(len(candidates))  # rising: to the end of every index
        uids = [prepared.uids[i] for i in candidates]
        times = [rows.times[i] for i in candidates]
        dumps = orjson.dumps
        doc_source = f'","source":{q(self.import_source)},"type":{q(etype)},"time":"'
        doc_data = '","datacontenttype":"application/json","data":'
        doc_tail = (f',"tesserasource":{q(source)},"tesserareceivedat":'
                    f'"{self._iso(received_at)}"}}')
        out_time = (',"source":"' + DERIVED_SOURCE + '","type":"profile.updated","time":')
        out_data = (f',"received_at":{dumps(now).decode()},"source_name":"tessera",'
                    f'"data":{{"profile_id":"')
        out_cause = (f',"source":{q(self.import_source)},"uid":"')
        out_type = f'","type":{q(etype)}}}}},"identifiers":[["profile_id","'
        out_tail = ('","datacontenttype":"application/json","dataschema":null,'
                    '"extensions":{},"specversion":"1.0","uid":"')
        number: dict[float, str] = {}
        orders: dict[tuple[str, ...], list[int]] = {}
        first = itemgetter(0)
        names: dict[str, tuple[str, int]] = {}
        c = ProfileColumns(source=source, ids=ids, event_uids=uids,
                           types=[etype] * len(candidates), times=times,
                           received_at=[received_at] * len(candidates), documents=[],
                           link_rows=[], link_types=[], link_values=[], trait_rows=[],
                           trait_names=[], trait_values=[], trait_priorities=[])
        outbox: list[tuple[str, str, str, bytes] | None] = []
        blake = hashlib.blake2b
        prefix = self.id_prefix
        for r, i in enumerate(candidates):
            idents = rows.identifiers[i]
            traits = rows.traits[i]
            uid = uids[r]
            pid = ids[r]
            event_id = f"{prefix}{rows.lines[i]}"
            types = tuple(map(first, idents))
            order = orders.get(types)
            if order is None:  # the priority order of these types, found once a chunk
                order = orders[types] = [idents.index(x) for x in sort(idents)]
            for k in order:
                type_, value = idents[k]
                c.link_rows.append(r)
                c.link_types.append(type_)
                c.link_values.append(value)
            changed: list[str] = []
            for name, value in traits.items():
                found = names.get(name)
                if found is None:
                    found = names[name] = (q(name), priority(name, source))
                text = dumps(value).decode()  # str: see ProfileColumns
                c.trait_rows.append(r)
                c.trait_names.append(name)
                c.trait_values.append(text)
                c.trait_priorities.append(found[1])
                changed.append(f'{found[0]}:{{"old":null,"new":{text}}}')
            data = dumps({"traits": traits, "identifiers": dict(idents)}).decode()
            c.documents.append(f'{{"specversion":"1.0","id":"{event_id}{doc_source}'
                               f'{self._iso(times[r])}{doc_data}{data}{doc_tail}')
            if changed:
                updated_id = f"{uid}:profile.updated"
                updated_uid = blake(_UPDATED_UID_SOURCE + updated_id.encode(),
                                    digest_size=16).hexdigest()
                at = number.get(times[r])
                if at is None:
                    at = number[times[r]] = dumps(times[r]).decode()
                outbox.append((DERIVED_TOPIC, updated_uid, f"profile_id:{pid}", (
                    f'{{"id":"{updated_id}"{out_time}{at}{out_data}{pid}","changed":'
                    f'{{{",".join(changed)}}},"caused_by":{{"id":"{event_id}"{out_cause}'
                    f'{uid}{out_type}{pid}"]],"subject":"{pid}{out_tail}{updated_uid}"}}'
                ).encode()))
            else:
                outbox.append(None)
        prepared.columns, prepared.outbox = c, outbox


@dataclass(slots=True)
class Prepared:
    """A chunk with its bulk candidates built (:meth:`ColumnarApplier.prepare`)."""

    chunk: Chunk
    uids: list[str]
    """The event uid of every row of ``chunk.rows``."""
    candidates: list[int]
    """Rows of ``chunk.rows`` that only create a new person unless the store says otherwise."""
    columns: ProfileColumns = field(
        default_factory=lambda: ProfileColumns("", *([] for _ in range(13))))
    """The candidates' profiles, row ``k`` is candidate ``k``."""
    outbox: list[tuple[str, str, str, bytes] | None] = field(default_factory=list)
    """Each candidate's ``profile.updated`` (None: it sets no trait)."""


def _subset(c: ProfileColumns, outbox: list[tuple[str, str, str, bytes] | None],
            keep: list[int]) -> tuple[ProfileColumns, list[tuple[str, str, str, bytes] | None]]:
    """The columns and messages of the candidates ``keep`` (rising positions)."""
    new = {k: n for n, k in enumerate(keep)}
    links = [j for j, r in enumerate(c.link_rows) if r in new]
    traits = [j for j, r in enumerate(c.trait_rows) if r in new]
    return ProfileColumns(
        source=c.source, ids=[c.ids[k] for k in keep], event_uids=[c.event_uids[k] for k in keep],
        types=[c.types[k] for k in keep], times=[c.times[k] for k in keep],
        received_at=[c.received_at[k] for k in keep], documents=[c.documents[k] for k in keep],
        link_rows=[new[c.link_rows[j]] for j in links],
        link_types=[c.link_types[j] for j in links],
        link_values=[c.link_values[j] for j in links],
        trait_rows=[new[c.trait_rows[j]] for j in traits],
        trait_names=[c.trait_names[j] for j in traits],
        trait_values=[c.trait_values[j] for j in traits],
        trait_priorities=[c.trait_priorities[j] for j in traits],
    ), [outbox[k] for k in keep]
