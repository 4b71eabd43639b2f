"""The columnar import path: profile rows kept as columns from the file to the store.

For ``kind: profiles`` CSV imports applied ``direct``, with the log or without. A block of
plain CSV lines arrives as columns (:func:`.readers.read_csv_blocks`, pyarrow);
each row's identifiers are normalized by the extractor and its traits converted
by the mapping (the same calls the row path makes), and a row that cannot be
mapped that way, or that the reader could not take as columns, becomes a
:class:`.readers.Record` for :meth:`ImportJob.to_event` (its event, or its reject
reason, is then exactly the row path's).

Rows that can only create a new person (:meth:`ColumnarBuilder.prepare`, the rule of
:mod:`.bulk`) are written without an :class:`Event` or any object per row: their
event uids, profile ids, CloudEvent documents, trait values and ``profile.updated``
records are built as lists (:class:`ColumnarBuilder`, plain data that the import's
reading process runs), and :meth:`StoreTx.create_profile_columns` writes them
(SQLite: one ``INSERT ... SELECT`` per table), or the store's packed form of them
(:meth:`ColumnarApplier.commit_ahead`). Every other row becomes the event the row
path would have made and goes through :meth:`ProfileProcessor.apply` after the
commit, in file order, as in :mod:`.bulk`. The store ends up with the same content;
``tests/imports/test_bulk.py`` compares the three paths.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import itemgetter
from typing import Any

import orjson

from tessera.bus.base import Message
from tessera.events.envelope import Event, IsoTimes, event_uid
from tessera.identity.resolver import new_profile_ids
from tessera.imports.bulk import count_identifiers
from tessera.imports.readers import Position
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC, BatchResult, ProfileProcessor
from tessera.store.base import Identifier, ProfileColumns, StoreTx, in_transaction
from tessera.store.outbox_pack import PackedMessages, Template

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


@dataclass(slots=True)
class EventLog:
    """Events as the event log stores them (:class:`Message` fields), as three lists: a
    chunk's five thousand cross from the reading process as three objects, not as
    five thousand to pickle one by one."""

    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    def add(self, id_: str, key: str, payload: bytes) -> None:
        self.ids.append(id_)
        self.keys.append(key)
        self.payloads.append(payload)

    def messages(self) -> list[Message]:
        return list(map(Message, self.ids, self.keys, self.payloads))

    def __len__(self) -> int:
        return len(self.ids)


class ColumnarBuilder:
    """Builds a chunk's new people as columns: everything that does not need the store.

    Plain data (the survivorship rules, the resolver's identifier priorities, the
    store's packing function), so that it pickles: the import's reading process
    (:mod:`.ahead`) builds and packs chunks while the writing thread only writes them.
    """

    def __init__(self, processor: ProfileProcessor, source: str, import_source: str,
                 id_prefix: str, event_type: str) -> None:
        self.source = source
        self.import_source = import_source
        self.id_prefix = id_prefix
        """Event ids are ``<id_prefix><line>`` (the import id and a colon)."""
        self.event_type = event_type
        self.priority = processor.survivorship.priority
        """A trait's priority for a source (the survivorship rules are plain data)."""
        self.type_priorities = processor.resolver.priorities()
        """The resolver's priority of each identifier type: the order of a profile's links."""
        self.packer = processor.store.column_packer()
        """The store's packing of new profiles (None: the store writes columns itself)."""
        self.log_events = False
        """Set by the job: build each candidate's event as the event log stores it."""
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

    def prepare(self, chunk: Chunk) -> Prepared:
        """Everything about the chunk that does not depend on the store: which rows can
        only create a new person if the store knows none of their identifiers (the rule
        of :mod:`.bulk`: no identifier shared with another row of the chunk, one value
        per type), and their profiles, documents and ``profile.updated`` messages. The
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
            self.build(prepared)
        return prepared

    def ahead(self, prepared: Prepared, rejected: list[tuple[int, str, Any]],
              start: Position, end: Position | None) -> Ahead:
        """``prepared`` as the reading process hands it to the writer: when every row of
        the chunk is a candidate and the store packs its columns, the packed write of
        all of them and their messages, ready to run (if the store then knows one of
        them, the writer reads the chunk again from ``start``); else the prepared chunk
        itself, pickled, for :meth:`ColumnarApplier.commit`."""
        chunk = prepared.chunk
        count = len(chunk.rows.lines) + len(chunk.events)
        packed = stub = outbox = None
        if (self.packer is not None and not chunk.events and prepared.candidates
                and len(prepared.candidates) == len(chunk.rows.lines)):
            packed = self.packer(prepared.columns, time.time())
            if packed is not None:
                outbox = prepared.messages()
                stub = prepared.stub(0, self)
        log, prepared.log = prepared.log, None
        whole = None if packed is not None else pickle.dumps(prepared, pickle.HIGHEST_PROTOCOL)
        return Ahead(count, rejected, start, end, len(prepared.candidates), packed, outbox,
                     stub, whole, chunk.received_at, log)

    def build(self, prepared: Prepared) -> None:
        """The candidates' columns and ``profile.updated`` records.

        The CloudEvent document and the ``profile.updated`` message are assembled from
        text pieces around the one part that needs serializing (the row's data, the
        changed values): the same JSON as ``orjson.dumps`` of ``Event.to_cloudevent()``
        and of the processor's ``_updated_event`` (``tests/imports/test_columnar.py``
        holds them equal), at a fraction of the cost per row. A message is kept as its
        few varying fields (:func:`updated_template` fills them in), so the store's
        outbox holds about a tenth of the bytes.
        """
        rows, candidates, received_at = (prepared.chunk.rows, prepared.candidates,
                                         prepared.chunk.received_at)
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
        number: dict[float, str] = {}
        orders: dict[tuple[str, ...], list[int]] = {}
        first = itemgetter(0)
        rank = self.type_priorities
        names: dict[str, tuple[str, int]] = {}
        c = ProfileColumns(source=source, ids=ids, event_uids=uids,
                           types=[etype] * len(candidates), times=times,
                           received_at=[received_at] * len(candidates), documents=[],
                           link_rows=[], link_types=[], link_values=[], trait_rows=[],
                           trait_names=[], trait_values=[], trait_priorities=[])
        records: list[str | None] = []
        blake = hashlib.blake2b
        prefix = self.id_prefix
        iso = self._iso
        log = EventLog() if self.log_events else None
        # the event as the log stores it: Event.to_json(), fields in their order
        log_head = '{"id":"'
        log_time = f'","source":{q(self.import_source)},"type":{q(etype)},"time":'
        log_data = (f',"received_at":{dumps(received_at).decode()},"source_name":{q(source)},'
                    f'"data":')
        log_idents = ',"identifiers":'
        log_tail = (',"subject":null,"datacontenttype":"application/json","dataschema":null,'
                    '"extensions":{},"specversion":"1.0","uid":"')
        if self._build_uniform(prepared, c, records, doc_source, doc_data, doc_tail, log,
                               (log_head, log_time, log_data, log_idents, log_tail)):
            prepared.columns, prepared.records, prepared.log = c, records, log
            prepared.template = updated_template(self.import_source, etype, prefix,
                                                 time.time())
            return
        for r, i in enumerate(candidates):
            idents = rows.identifiers[i]
            traits = rows.traits[i]
            uid = uids[r]
            pid = ids[r]
            line = rows.lines[i]
            types = tuple(map(first, idents))
            order = orders.get(types)
            if order is None:  # the resolver's link order of these types, once a chunk
                order = orders[types] = sorted(range(len(types)),
                                               key=lambda k: rank.get(types[k], 1000))
            for k in order:
                type_, value = idents[k]
                c.link_rows.append(r)
                c.link_types.append(type_)
                c.link_values.append(value)
            changed: list[str] = []
            for name, value in traits.items():
                found = names.get(name)
                if found is None:
                    found = names[name] = (q(name), self.priority(name, source))
                text = dumps(value).decode()  # str: see ProfileColumns
                c.trait_rows.append(r)
                c.trait_names.append(name)
                c.trait_values.append(text)
                c.trait_priorities.append(found[1])
                changed.append(f'{found[0]}:{{"old":null,"new":{text}}}')
            data = dumps({"traits": traits, "identifiers": dict(idents)}).decode()
            c.documents.append(f'{{"specversion":"1.0","id":"{prefix}{line}{doc_source}'
                               f'{iso(times[r])}{doc_data}{data}{doc_tail}')
            if log is not None:
                first_type, first_value = idents[order[0]]
                log.add(uid, f"{first_type}:{first_value}", (
                    f'{log_head}{prefix}{line}{log_time}{dumps(times[r]).decode()}{log_data}'
                    f'{data}{log_idents}{dumps([idents[k] for k in order]).decode()}'
                    f'{log_tail}{uid}"}}').encode())
            if changed:
                updated_uid = blake(b"%b%b:profile.updated" % (_UPDATED_UID_SOURCE,
                                                                uid.encode()),
                                    digest_size=16).hexdigest()
                at = number.get(times[r])
                if at is None:
                    at = number[times[r]] = dumps(times[r]).decode()
                records.append(f"{updated_uid}\x1f{uid}\x1f{at}\x1f{pid}\x1f"
                               f"{','.join(changed)}\x1f{line}")
            else:
                records.append(None)
        prepared.columns, prepared.records, prepared.log = c, records, log
        prepared.template = updated_template(self.import_source, etype, prefix, time.time())

    def _build_uniform(self, prepared: Prepared, c: ProfileColumns,
                       records: list[str | None], doc_source: str, doc_data: str,
                       doc_tail: str, log: EventLog | None,
                       log_parts: tuple[str, str, str, str, str]) -> bool:
        """:meth:`build` a column at a time when every candidate has the same identifier
        types and trait names in the same order (a file without empty cells); False,
        having changed nothing, otherwise. The same values as the loop of :meth:`build`
        (``tests/imports/test_columnar.py`` holds them equal), in about half the time:
        each JSON value is written once, for the trait, the document's data and the
        message alike, and the rows are put together by ``zip`` and ``map``."""
        rows, candidates = prepared.chunk.rows, prepared.candidates
        n = len(candidates)
        if n == len(rows.lines):
            idents, traits, lines = rows.identifiers, rows.traits, rows.lines
        else:
            idents = [rows.identifiers[i] for i in candidates]
            traits = [rows.traits[i] for i in candidates]
            lines = [rows.lines[i] for i in candidates]
        first = itemgetter(0)
        shapes = set(map(tuple, map(map, repeat(first), idents)))
        names_seen = set(map(tuple, traits))
        if len(shapes) != 1 or len(names_seen) != 1:
            return False
        (types,), (names,) = shapes, names_seen
        if not names:
            return False  # no message: the loop's None records
        rank = self.type_priorities
        order = sorted(range(len(types)), key=lambda k: rank.get(types[k], 1000))
        m, t = len(types), len(names)
        dumps, decode = orjson.dumps, bytes.decode

        def q(text: str) -> str:
            return decode(dumps(text))

        # identifiers: the values of each position, JSON-quoted for the document
        values = [list(map(itemgetter(1), map(itemgetter(k), idents))) for k in range(m)]
        quoted = [list(map(decode, map(dumps, column))) for column in values]
        c.link_rows = list(chain.from_iterable(map(repeat, range(n), repeat(m))))
        c.link_types = [types[k] for k in order] * n
        c.link_values = list(chain.from_iterable(zip(*(values[k] for k in order), strict=True)))
        # traits: each value's JSON text once
        texts = [list(map(decode, map(dumps, map(itemgetter(name), traits))))
                 for name in names]
        c.trait_rows = list(chain.from_iterable(map(repeat, range(n), repeat(t))))
        c.trait_names = list(names) * n
        c.trait_values = list(chain.from_iterable(zip(*texts, strict=True)))
        c.trait_priorities = [self.priority(name, self.source) for name in names] * n
        # {"traits":{..},"identifiers":{..}} and the changed members, from those texts
        keys = [q(name) for name in names]
        trait_json = map(",".join, zip(*(map(f"{key}:".__add__, column)
                                         for key, column in zip(keys, texts, strict=True)),
                                       strict=True))
        ident_json = map(",".join, zip(*(map(f"{q(types[k])}:".__add__, quoted[k])
                                         for k in range(m)), strict=True))
        data = list(map('{{"traits":{{{}}},"identifiers":{{{}}}}}'.format, trait_json,
                        ident_json))
        changed = map(",".join, zip(*(map(str.__add__, map(f'{key}:{{"old":null,"new":'.__add__,
                                                            column), repeat("}"))
                                      for key, column in zip(keys, texts, strict=True)),
                                    strict=True))
        prefix, iso = self.id_prefix, self._iso
        c.documents = [f'{{"specversion":"1.0","id":"{prefix}{line}{doc_source}{iso(at)}'
                       f'{doc_data}{d}{doc_tail}'
                       for line, at, d in zip(lines, c.times, data, strict=True)]
        blake = hashlib.blake2b
        stamp = {at: decode(dumps(at)) for at in dict.fromkeys(c.times)}
        if log is not None:  # the events as the log stores them, in the resolver's order
            head, at_time, at_data, at_idents, tail = log_parts
            # '["type","value"' per identifier, joined by '],': the array without its ends
            pairs = map("],".join, zip(*(map(f'[{q(types[k])},'.__add__, quoted[k])
                                         for k in order), strict=True))
            log.ids.extend(c.event_uids)
            log.keys.extend(map(f"{types[order[0]]}:".__add__, values[order[0]]))
            log.payloads.extend(
                f'{head}{prefix}{line}{at_time}{stamp[at]}{at_data}{d}'
                f'{at_idents}[{ident}]]{tail}{uid}"}}'.encode()
                for uid, line, at, d, ident in zip(c.event_uids, lines, c.times, data, pairs,
                                                   strict=True))
        for uid, at, pid, ch, line in zip(c.event_uids, c.times, c.ids, changed, lines,
                                          strict=True):
            updated = blake(b"%b%b:profile.updated" % (_UPDATED_UID_SOURCE, uid.encode()),
                            digest_size=16).hexdigest()
            records.append(f"{updated}\x1f{uid}\x1f{stamp[at]}\x1f{pid}\x1f{ch}\x1f{line}")
        return True


def updated_template(import_source: str, event_type: str, id_prefix: str,
                     now: float) -> Template:
    """The ``profile.updated`` message of an imported new profile as a template of its
    fields: 0 its uid, 1 the cause's uid, 2 the time, 3 the profile id, 4 the changed
    traits (JSON members), 5 the line. Filled in, it is byte for byte the processor's
    derived event (``tests/imports/test_columnar.py``)."""
    def q(text: str) -> str:
        return orjson.dumps(text).decode()

    dumps = orjson.dumps
    payload: tuple[str | int, ...] = (
        '{"id":"', 1, ':profile.updated","source":"' + DERIVED_SOURCE
        + '","type":"profile.updated","time":', 2,
        f',"received_at":{dumps(now).decode()},"source_name":"tessera",'
        '"data":{"profile_id":"', 3, '","changed":{', 4,
        f'}},"caused_by":{{"id":"{id_prefix}', 5, f'","source":{q(import_source)},"uid":"', 1,
        f'","type":{q(event_type)}}}}},"identifiers":[["profile_id","', 3,
        '"]],"subject":"', 3, '","datacontenttype":"application/json","dataschema":null,'
        '"extensions":{},"specversion":"1.0","uid":"', 0, '"}')
    return Template(DERIVED_TOPIC, (0,), ("profile_id:", 3), payload)


class ColumnarApplier:
    """Applies chunks: new people column-wise in one transaction, the rest per event."""

    def __init__(self, processor: ProfileProcessor, builder: ColumnarBuilder,
                 make_event: Callable[[int, list[Identifier], dict[str, Any], float, float],
                                      Event]) -> None:
        self.processor = processor
        self.store = processor.store
        self.builder = builder
        self.make_event = make_event
        self.created = 0
        self.packed = 0
        """Chunks written as the reading process packed them (:meth:`commit_ahead`)."""

    # -- applying ---------------------------------------------------------------------

    def commit_ahead(self, ahead: Ahead, reread: Callable[[Ahead], Prepared],
                     retries: int = 8) -> BatchResult:
        """A chunk from the reading process: its packed write when the erasure screen
        passes it and the store knows none of its events and identifiers (one
        transaction, no Python per row); else :meth:`commit` of the chunk, as an import
        without a reading process would: the chunk as sent when it was not packed, or
        read again by ``reread``."""
        packed = ahead.packed
        if packed is not None and ahead.stub is not None and self._screen_passes(ahead.stub):
            def write(tx: StoreTx) -> bool:
                if not tx.create_packed_profiles(packed):
                    return False
                if ahead.outbox is not None:
                    tx.add_outbox_packed(ahead.outbox)
                return True

            if in_transaction(self.store, write, retries):
                self.packed += 1
                self.created += ahead.candidates
                return BatchResult(applied=ahead.candidates, profiles_created=ahead.candidates)
        if ahead.prepared is not None:
            return self.commit(pickle.loads(ahead.prepared), retries)
        return self.commit(reread(ahead), retries)

    def _screen_passes(self, stub: Event) -> bool:
        """Whether the erasure screen keeps every event as it is (nobody erased): it hands
        back the very list it got then."""
        screen = self.processor.screen
        probe = [stub]
        return screen is None or screen(probe) is probe

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
        if (screen is not None and keep
                and not self._screen_passes(prepared.stub(keep[0], self.builder))):
            stubs = {k: prepared.stub(k, self.builder) for k in keep}
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
            if len(keep) < len(candidates):
                prepared = prepared.subset(keep)
            now = time.time()
            tx.create_profile_columns(prepared.columns, now)
            tx.mark_applied(prepared.columns.event_uids, now)
            outbox = prepared.messages()
            if outbox is not None:
                tx.add_outbox_packed(outbox)
        result.applied = result.profiles_created = len(keep)
        return result, rest


@dataclass(slots=True)
class Prepared:
    """A chunk with its bulk candidates built (:meth:`ColumnarBuilder.prepare`)."""

    chunk: Chunk
    uids: list[str]
    """The event uid of every row of ``chunk.rows``."""
    candidates: list[int]
    """Rows of ``chunk.rows`` that only create a new person unless the store says otherwise."""
    columns: ProfileColumns = field(
        default_factory=lambda: ProfileColumns("", *([] for _ in range(13))))
    """The candidates' profiles, row ``k`` is candidate ``k``."""
    records: list[str | None] = field(default_factory=list)
    """Each candidate's ``profile.updated`` fields for ``template`` (None: it sets no trait)."""
    template: Template | None = None
    log: EventLog | None = None
    """Each candidate's event as the event log stores it (when the import logs events);
    the job then makes it every record's (:meth:`.job.ImportJob._next_chunk`)."""

    def messages(self) -> PackedMessages | None:
        """The candidates' ``profile.updated`` messages, packed; None if there are none."""
        records = [r for r in self.records if r is not None]
        if not records or self.template is None:
            return None
        return PackedMessages.build(self.template, records)

    def stub(self, k: int, builder: ColumnarBuilder) -> Event:
        """Candidate ``k`` as an event with its identifiers: what the erasure screen reads."""
        rows, i = self.chunk.rows, self.candidates[k]
        return Event(id=f"{builder.id_prefix}{rows.lines[i]}", source=builder.import_source,
                     type=builder.event_type, time=rows.times[i],
                     received_at=self.chunk.received_at, source_name=builder.source,
                     identifiers=list(rows.identifiers[i]), uid=self.uids[i])

    def subset(self, keep: list[int]) -> Prepared:
        """The candidates ``keep`` (rising positions) with their columns and records."""
        c = self.columns
        new = {k: n for n, k in enumerate(keep)}
        links = [j for j, r in enumerate(c.link_rows) if r in new]
        traits = [j for j, r in enumerate(c.trait_rows) if r in new]
        columns = ProfileColumns(
            source=c.source, ids=[c.ids[k] for k in keep],
            event_uids=[c.event_uids[k] for k in keep],
            types=[c.types[k] for k in keep], times=[c.times[k] for k in keep],
            received_at=[c.received_at[k] for k in keep],
            documents=[c.documents[k] for k in keep],
            link_rows=[new[c.link_rows[j]] for j in links],
            link_types=[c.link_types[j] for j in links],
            link_values=[c.link_values[j] for j in links],
            trait_rows=[new[c.trait_rows[j]] for j in traits],
            trait_names=[c.trait_names[j] for j in traits],
            trait_values=[c.trait_values[j] for j in traits],
            trait_priorities=[c.trait_priorities[j] for j in traits],
        )
        return Prepared(self.chunk, self.uids, [self.candidates[k] for k in keep], columns,
                        [self.records[k] for k in keep], self.template)


@dataclass(slots=True)
class Ahead:
    """A chunk as the reading process hands it to the writer (:meth:`ColumnarBuilder.ahead`):
    plain bytes and text, cheap to send between processes and to unpickle."""

    count: int
    """Records of the chunk (rows and events)."""
    rejected: list[tuple[int, str, Any]]
    start: Position
    """Where the chunk begins: the writer reads it again from here when it must."""
    end: Position | None
    """The position after the chunk (None: the end of the file)."""
    candidates: int
    packed: Any
    """The store's packed write of every row (None: the writer reads the chunk again)."""
    outbox: PackedMessages | None
    stub: Event | None
    """The first row as the erasure screen reads it."""
    prepared: bytes | None = None
    """The :class:`Prepared` chunk pickled, when there is no packed write."""
    received_at: float = 0.0
    """When the chunk was read: a chunk read again keeps it (its events are the same)."""
    log: EventLog | None = None
    """Every record's event as the event log stores it, in file order (when the import
    logs events): appended to the log before the chunk is written."""
