"""One import: read a file as a stream, map rows to events, apply them in batches.

Every batch is committed before the checkpoint moves past it, so an
interrupted import resumes after the last committed batch; events carry a
stable id (the import's id and the record's line), so a batch applied twice,
or a whole file imported twice, is deduplicated by the processor like any
redelivered event.

Two ways to apply, chosen per import (``docs/batch.md`` has the measurements):

``direct`` (default)
    The events are appended to the event log (so ``replay --rebuild`` still
    re-derives everything) and applied right away in large batches: rows that
    can only create a new person set-based (:mod:`.bulk`), the others through
    :meth:`ProfileProcessor.apply`, the same code the worker runs. The worker
    later receives them from the log and skips them as already applied.
``bus``
    The events are only appended to the log; the worker applies them at its
    own pace, exactly like real-time events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

from tessera.bus.base import Bus, Message
from tessera.events import EVENTS_TOPIC
from tessera.events.envelope import Event, event_uid
from tessera.identity.extract import Identifier, IdentifierExtractor, get_path
from tessera.imports.ahead import ReadAhead, ReadAheadError
from tessera.imports.bulk import BulkApplier
from tessera.imports.columnar import (
    Ahead,
    Chunk,
    ColumnarApplier,
    ColumnarBuilder,
    EventLog,
    Prepared,
    Rows,
)
from tessera.imports.mapping import ImportMapping
from tessera.imports.readers import (
    Block,
    Format,
    Position,
    ReaderError,
    Record,
    csv_header,
    detect_format,
    read,
    read_csv_blocks,
)
from tessera.processing.profiles import BatchResult, ProfileProcessor
from tessera.profiles.traits import MAX_TRAITS_PER_EVENT
from tessera.store.base import Store

log = structlog.get_logger("tessera.imports")
Mode = Literal["direct", "bus"]
IMPORT_SOURCE = "tessera/imports"
PROFILE_EVENT_TYPE = "tessera.import.profile"
CHECKPOINT_VERSION = 1
READ_AHEAD_BYTES = 8 << 20
"""From this much file left on, a columnar import reads in a process of its own
(:mod:`.ahead`); below, starting one costs more than it saves."""
Progress = Callable[[int, int], None]
"""Called with (done, total) in the file's unit: bytes (CSV, JSONL) or rows (Parquet)."""


class ImportError_(Exception):
    """The import cannot run (bad file, unknown source, mapping columns missing)."""


@dataclass(slots=True)
class ImportSummary:
    import_id: str
    file: str
    source: str
    format: str
    kind: str
    mode: str
    rows: int = 0
    """Records read (imported, duplicate and rejected)."""
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    profiles_created: int = 0
    merges: int = 0
    seconds: float = 0.0
    resumed_from_line: int = 0
    done: bool = False
    rejects_file: str = ""
    event_time: float = 0.0
    position: dict[str, int] = field(default_factory=dict)
    rejects_bytes: int = 0
    version: int = CHECKPOINT_VERSION
    uids: str = "hashed"
    """How the rows' event uids are made (:func:`import_uid`): ``ordered``, or ``hashed``
    for an import begun by an earlier version (its checkpoint has no ``uids``), which keeps
    the uids it started with so that a resumed or repeated run finds its rows applied."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def file_identity(path: Path, sample: int = 1 << 16) -> str:
    """A cheap identity of a file's content: its size and its first and last 64 KiB."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=8)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(sample))
        if size > sample:
            fh.seek(max(sample, size - sample))
            h.update(fh.read(sample))
    return h.hexdigest()


UID_PROBE_LINES = 2000
"""A fresh run looks for the earlier versions' uids of this many first lines."""


def import_uid_prefix(source: str, import_id: str) -> str:
    """The first 16 hex digits of every row uid of one import (:func:`import_uid`)."""
    key = f"{source}\x1f{IMPORT_SOURCE}\x1f{import_id}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def import_uid(prefix: str, line: int) -> str:
    """The event uid of line ``line`` of an import: its :func:`import_uid_prefix` and the
    line in 16 hex digits, 32 hex digits as every event uid. A pure function of (source,
    import id, line), so a repeated or resumed import finds its rows applied, as with the
    hash :func:`event_uid` of the same three (what earlier versions used); but rising
    with the line, so the store's applied records of an import go to one place of their
    B-tree instead of to random pages."""
    return f"{prefix}{line:016x}"


def import_id_for(path: Path, source: str, mapping: ImportMapping) -> str:
    key = f"{path.name}\x1f{file_identity(path)}\x1f{source}\x1f{mapping.digest()}"
    return "imp_" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class ImportJob:
    def __init__(
        self,
        *,
        path: Path,
        source: str,
        mapping: ImportMapping,
        store: Store,
        processor: ProfileProcessor,
        extractor: IdentifierExtractor,
        bus: Bus | None,
        work_dir: Path,
        known_sources: set[str] | None = None,
        fmt: str | None = None,
        mode: Mode = "direct",
        batch_size: int = 5000,
        import_id: str | None = None,
        rejects_path: Path | None = None,
        restart: bool = False,
        log_events: bool = True,
        bulk: bool = True,
        columnar: bool = True,
        read_ahead: bool | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ImportError_(f"{path}: no such file")
        if known_sources is not None and source not in known_sources:
            raise ImportError_(
                f"unknown source {source!r}: declare it under sources in the configuration "
                f"(its priority decides survivorship); known: {', '.join(sorted(known_sources))}")
        if mode == "bus" and bus is None:
            raise ImportError_("mode 'bus' needs a bus")
        self.source = source
        self.mapping = mapping
        self.store = store
        self.processor = processor
        self.bulk = BulkApplier(processor) if bulk else None
        """New people set-based, the rest per event (:mod:`.bulk`); None: all per event."""
        self.extractor = extractor
        self.bus = bus
        self.mode: Mode = mode
        self.log_events = log_events and bus is not None
        self.batch_size = max(1, batch_size)
        try:
            self.format: Format = detect_format(self.path, fmt)
        except ReaderError as exc:
            raise ImportError_(str(exc)) from None
        self.import_id = import_id or import_id_for(self.path, source, mapping)
        self.work_dir = Path(work_dir)
        self.checkpoint_path = self.work_dir / f"{self.import_id}.checkpoint.json"
        self.rejects_path = Path(rejects_path or self.work_dir / f"{self.import_id}.rejects.jsonl")
        self.restart = restart
        self._idents = [
            (t, [c] if isinstance(c, str) else list(c)) for t, c in mapping.identifiers.items()
        ]
        self._traits = list(mapping.traits.items())
        self._props = list(mapping.properties.items())
        self.uid_prefix: str | None = None
        """None: the rows' uids are :func:`event_uid` hashes (:attr:`ImportSummary.uids`)."""
        self.columnar: ColumnarApplier | None = None
        self.builder: ColumnarBuilder | None = None
        """What the columnar path builds chunks with (the reading process gets it too)."""
        """Profile rows of plain CSV kept as columns to the store (:mod:`.columnar`)."""
        if (columnar and bulk and mode == "direct"
                and self.format == "csv" and mapping.kind == "profiles"
                and not mapping.id_column and len(mapping.traits) <= MAX_TRAITS_PER_EVENT
                # an alias stands for other identifiers: never the bulk rule's new person
                and "previous_id" not in mapping.identifiers
                # configured trait mappings would read more traits out of these events
                and not processor.traits._mappings_for(PROFILE_EVENT_TYPE)):
            self.builder = ColumnarBuilder(processor, source, IMPORT_SOURCE,
                                           f"{self.import_id}:", PROFILE_EVENT_TYPE)
            self.builder.log_events = self.log_events
            self.columnar = ColumnarApplier(processor, self.builder, self._profile_event)
        self.read_ahead = read_ahead
        self._use_uids("ordered")

    # -- checkpoint ----------------------------------------------------------

    def load_checkpoint(self) -> ImportSummary | None:
        try:
            raw = orjson.loads(self.checkpoint_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if raw.get("version") != CHECKPOINT_VERSION or raw.get("import_id") != self.import_id:
            return None
        return ImportSummary(**raw)

    def _save_checkpoint(self, summary: ImportSummary) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.checkpoint_path)

    def total(self) -> int:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        return self.path.stat().st_size

    # -- mapping rows to events ---------------------------------------------

    @staticmethod
    def _get(row: dict[str, Any], column: str) -> Any:
        if column in row:
            return row[column]
        return get_path(row, column) if "." in column else None

    def to_event(self, record: Record, event_time: float, now: float) -> Event | str:
        """The record's event, or the reason it is rejected."""
        row = record.row
        assert row is not None
        mapping = self.mapping
        idents: list[tuple[str, str]] = []
        unusable: list[str] = []
        for type_, columns in self._idents:
            for col in columns:
                raw = self._get(row, col)
                if raw is None or raw == "":
                    continue
                value = self.extractor.normalize(type_, raw)
                if value is None:
                    unusable.append(f"{type_} {raw!r}")
                elif (type_, value) not in idents:
                    idents.append((type_, value))
        if not idents:
            detail = f" (unusable: {', '.join(unusable)})" if unusable else ""
            return f"no usable identifier{detail}"
        traits: dict[str, Any] = {}
        try:
            for name, col in self._traits:
                value = mapping.convert(name, self._get(row, col))
                if value is not None:
                    traits[name] = value
            props: dict[str, Any] = {}
            for name, col in self._props:
                value = mapping.convert(name, self._get(row, col))
                if value is not None:
                    props[name] = value
        except ValueError as exc:
            return f"{name}: {exc}"
        when = event_time
        if mapping.time_column:
            raw_time = self._get(row, mapping.time_column)
            if raw_time is not None and raw_time != "":
                try:
                    when = mapping.parse_time(raw_time)
                except ValueError as exc:
                    return f"{mapping.time_column}: {exc}"
        if mapping.kind == "events":
            type_name = mapping.event_type
            if mapping.event_type_column:
                found = self._get(row, mapping.event_type_column)
                if found is not None and str(found).strip():
                    type_name = str(found).strip()
            if not type_name:
                return f"{mapping.event_type_column}: no event type"
            data: dict[str, Any] = dict(props)
            if traits:
                data["traits"] = traits
        else:
            type_name = PROFILE_EVENT_TYPE
            data = {"traits": traits}
        event_id = f"{self.import_id}:{record.line}"
        if mapping.id_column:
            own = self._get(row, mapping.id_column)
            if own is None or str(own).strip() == "":
                return f"{mapping.id_column}: no record id"
            event_id = str(own).strip()
        data["identifiers"] = dict(idents)
        return self._event(event_id, type_name, when, now, data, idents,
                           "" if mapping.id_column else self._uid(record.line))

    def _event(self, event_id: str, type_name: str, when: float, now: float,
               data: dict[str, Any], idents: list[Identifier], uid: str) -> Event:
        return Event(
            id=event_id,
            source=IMPORT_SOURCE,
            type=type_name,
            time=when,
            received_at=now,
            source_name=self.source,
            data=data,
            identifiers=self.extractor.sort(idents),
            datacontenttype="application/json",
            uid=uid,
        )

    def _uid(self, line: int) -> str:
        """The uid of the event of line ``line`` (without ``id_column``)."""
        if self.uid_prefix is None:
            return ""  # Event makes the hash of (source, import source, id)
        return import_uid(self.uid_prefix, line)

    def _use_uids(self, scheme: str) -> None:
        self.uid_prefix = (import_uid_prefix(self.source, self.import_id)
                           if scheme == "ordered" else None)
        if self.builder is not None:
            self.builder.uid_prefix = self.uid_prefix

    def _uid_scheme(self) -> str:
        """For a run without a checkpoint: ``hashed`` when the store holds an earlier
        version's uid of one of the first lines (this import ran before, its checkpoint is
        gone or ``restart`` was asked), else ``ordered``."""
        if self.mapping.id_column:
            return "ordered"  # the record's own id makes the uid either way
        probe = [event_uid(self.source, IMPORT_SOURCE, f"{self.import_id}:{line}")
                 for line in range(1, UID_PROBE_LINES + 1)]
        return "hashed" if self.store.applied(probe) else "ordered"

    def _profile_event(self, line: int, idents: list[Identifier], traits: dict[str, Any],
                       when: float, now: float) -> Event:
        """The event :meth:`to_event` makes of a ``kind: profiles`` row (no ``id_column``)."""
        return self._event(f"{self.import_id}:{line}", PROFILE_EVENT_TYPE, when, now,
                           {"traits": traits, "identifiers": dict(idents)}, idents,
                           self._uid(line))

    def _map_block(self, block: Block, chunk: Chunk, event_time: float,
                   rejected: list[tuple[int, str, Any]]) -> None:
        """Map a block's rows into ``chunk``: column-wise where the row path's calls
        succeed, else through :meth:`to_event` (its event or its reject reason)."""
        if block.records is not None:
            for record in block.records:
                self._map_record(record, chunk, event_time, rejected)
            return
        assert block.columns is not None
        if self._map_columns(block, chunk, event_time, rejected):
            return
        cols = block.columns
        rows = chunk.rows
        normalize = self.extractor.normalize
        convert = self.mapping.convert
        parse_time = self.mapping.parse_time
        ident_cols = [(t, [cols[c] for c in columns]) for t, columns in self._idents]
        trait_cols = [(name, cols[c]) for name, c in self._traits]
        json_traits = {n for n, kind in self.mapping.types.items() if kind == "json"}
        time_col = cols[self.mapping.time_column] if self.mapping.time_column else None
        parsed: dict[str, float] = {}
        for i in range(block.rows):
            line = block.first_line + i
            idents: list[Identifier] = []
            for type_, columns in ident_cols:
                for col in columns:
                    raw = col[i]
                    if raw:
                        value = normalize(type_, raw)
                        if value is not None and (type_, value) not in idents:
                            idents.append((type_, value))
            traits: dict[str, Any] = {}
            when = event_time
            try:
                if not idents:
                    raise ValueError
                for name, col in trait_cols:
                    if name in json_traits and "\\u0000" in col[i]:
                        raise ValueError  # the trait extractor would strip the NUL
                    value = convert(name, col[i])
                    if value is not None:
                        traits[name] = value
                if time_col is not None and time_col[i] != "":
                    raw_time = time_col[i]
                    found = parsed.get(raw_time)
                    if found is None:
                        found = parsed[raw_time] = parse_time(raw_time)
                    when = found
            except ValueError:  # the row path says why (or makes its event)
                row = block.table.slice(i, 1).to_pylist()[0]
                self._map_record(Record(line, row), chunk, event_time, rejected)
                continue
            chunk.order.append((line, len(rows.lines)))
            rows.lines.append(line)
            rows.identifiers.append(idents)
            rows.traits.append(traits)
            rows.times.append(when)

    def _map_columns(self, block: Block, chunk: Chunk, event_time: float,
                     rejected: list[tuple[int, str, Any]]) -> bool:
        """:meth:`_map_block`'s loop done a column at a time: the same calls (the
        extractor's ``normalize`` of every identifier, the mapping's ``convert`` of every
        distinct trait text, ``parse_time`` of every distinct time) over whole columns,
        and each row's identifiers and traits put together by ``zip``. False, having
        changed nothing, where the loop is needed: an identifier type of several
        columns, a value either call refuses, a NUL escape in a ``json`` trait."""
        assert block.columns is not None
        cols = block.columns
        if any(len(columns) != 1 for _, columns in self._idents):
            return False
        convert = self.mapping.convert
        types = [t for t, _ in self._idents]
        try:
            idents_by_type = [self.extractor.normalize_column(t, cols[columns[0]])
                              for t, columns in self._idents]
            values_by_trait = []
            for name, column in self._traits:
                col = cols[column]
                if self.mapping.types.get(name) == "json" and any(
                        map(str.__contains__, col, repeat("\\u0000"))):
                    return False  # the trait extractor would strip the NUL
                if self.mapping.types.get(name) == "json":  # values of their own per row
                    values_by_trait.append(list(map(convert, repeat(name), col)))
                    continue
                known = {raw: convert(name, raw) for raw in dict.fromkeys(col)}
                values_by_trait.append(list(map(known.__getitem__, col)))
            if self.mapping.time_column:
                col = cols[self.mapping.time_column]
                parse_time = self.mapping.parse_time
                at = {raw: parse_time(raw) if raw != "" else event_time
                      for raw in dict.fromkeys(col)}
                times = list(map(at.__getitem__, col))
            else:
                times = [event_time] * block.rows
        except ValueError:
            return False
        # a row's identifiers: (type, value) of the values normalize kept, in type order
        pairs = [list(zip(repeat(t), values, strict=False))
                 for t, values in zip(types, idents_by_type, strict=True)]
        if any(None in values for values in idents_by_type):
            idents = [[x for x in row if x[1] is not None] for row in zip(*pairs, strict=True)]
        else:
            idents = list(map(list, zip(*pairs, strict=True)))
        names = [name for name, _ in self._traits]
        if any(None in values for values in values_by_trait):
            traits = [{n: v for n, v in zip(names, row, strict=True) if v is not None}
                      for row in zip(*values_by_trait, strict=True)]
        elif names:
            traits = list(map(dict, zip(*(zip(repeat(n), values, strict=False) for n, values
                                          in zip(names, values_by_trait, strict=True)),
                                        strict=True)))
        else:
            traits = [{} for _ in range(block.rows)]
        rows, first = chunk.rows, block.first_line
        lines = range(first, first + block.rows)
        if all(idents):
            chunk.order.extend(zip(lines, range(len(rows.lines), len(rows.lines) + block.rows),
                                   strict=True))
            rows.lines.extend(lines)
            rows.identifiers.extend(idents)
            rows.traits.extend(traits)
            rows.times.extend(times)
            return True
        for i, line in enumerate(lines):
            if not idents[i]:  # the row path says why
                row = block.table.slice(i, 1).to_pylist()[0]
                self._map_record(Record(line, row), chunk, event_time, rejected)
                continue
            chunk.order.append((line, len(rows.lines)))
            rows.lines.append(line)
            rows.identifiers.append(idents[i])
            rows.traits.append(traits[i])
            rows.times.append(times[i])
        return True

    def _map_record(self, record: Record, chunk: Chunk, event_time: float,
                    rejected: list[tuple[int, str, Any]]) -> None:
        if record.row is None:
            rejected.append((record.line, record.error or "unreadable", record.raw))
            return
        made = self.to_event(record, event_time, chunk.received_at)
        if isinstance(made, str):
            rejected.append((record.line, made, record.row))
        else:
            chunk.order.append((record.line, -1 - len(chunk.events)))
            chunk.events.append(made)

    def _next_chunk(self, blocks: Any, event_time: float, received_at: float | None = None
                    ) -> tuple[Prepared, list[tuple[int, str, Any]], Position | None]:
        """The next block mapped and prepared for the store (:meth:`ColumnarApplier.prepare`),
        its rejects, and the position after it (None at the end of the file); with the
        log, every record's event as the log stores it (:attr:`Prepared.log`)."""
        assert self.builder is not None
        chunk = Chunk(Rows(), [], time.time() if received_at is None else received_at)
        rejected: list[tuple[int, str, Any]] = []
        end: Position | None = None
        for block in blocks:
            self._map_block(block, chunk, event_time, rejected)
            end = block.end
            break
        prepared = self.builder.prepare(chunk)
        if self.log_events:
            prepared.log = self._log_messages(prepared)
        return prepared, rejected, end

    def _log_messages(self, prepared: Prepared) -> EventLog:
        """Every record of the chunk as the event log stores it, in file order: the
        builder's text for the new-person candidates, ``Event.to_json()`` for the rest
        (the same bytes: ``tests/imports/test_columnar.py``)."""
        chunk, rows = prepared.chunk, prepared.chunk.rows
        built = prepared.log or EventLog()
        n = len(rows.lines)
        if not chunk.events and len(built) == n and len(prepared.candidates) == n:
            return built  # every row a candidate: the builder's lists are in file order
        by_row = {i: k for k, i in enumerate(prepared.candidates)} if len(built) else {}
        out = EventLog()
        for line, index in chunk.order:
            k = by_row.get(index) if index >= 0 else None
            if k is not None:
                out.add(built.ids[k], built.keys[k], built.payloads[k])
                continue
            event = (self._profile_event(line, rows.identifiers[index], rows.traits[index],
                                         rows.times[index], chunk.received_at)
                     if index >= 0 else chunk.events[-1 - index])
            out.add(event.uid, event.partition_key, event.to_json())
        return out

    def _next_prepared(self, blocks: Any, event_time: float
                       ) -> tuple[Prepared, list[tuple[int, str, Any]], Position | None, int]:
        """:meth:`_next_chunk` with the chunk's number of records, as :meth:`ReadAhead.next`."""
        prepared, rejected, end = self._next_chunk(blocks, event_time)
        chunk = prepared.chunk
        return prepared, rejected, end, len(chunk.rows.lines) + len(chunk.events)

    def _reread(self, ahead: Ahead, event_time: float) -> Prepared:
        """The chunk of ``ahead`` read and prepared here: for the writer, when the packed
        write of the reading process cannot serve (a row known, applied or erased)."""
        blocks = read_csv_blocks(self.path, ahead.start, self.batch_size,
                                 sorted(self.mapping.columns()))
        prepared, _, end = self._next_chunk(blocks, event_time, ahead.received_at)
        if end != ahead.end:
            raise ImportError_(f"{self.path.name}: the file changed during the import "
                               f"(line {ahead.start.line} onwards read differently)")
        return prepared

    def _start_reader(self, start: Position, event_time: float) -> ReadAhead | None:
        """The reading process, or None (the import reads in process) when no process
        can be started here (no interpreter to run, a limit on processes)."""
        try:
            return ReadAhead(self, start, event_time)
        except OSError as exc:
            log.warning("import.reading_process_unavailable", import_id=self.import_id,
                        error=str(exc))
            return None

    def _reads_ahead(self, remaining: int) -> bool:
        """Whether chunks are read, mapped and packed in a process of their own: asked
        (``read_ahead``), or by default when what remains of the file is large enough to
        repay starting one (about half a second)."""
        if self.read_ahead is not None:
            return self.read_ahead
        return remaining >= READ_AHEAD_BYTES

    def __getstate__(self) -> dict[str, Any]:
        """The job as its reading process (:mod:`.ahead`) gets it: what reading, mapping and
        building chunks needs, without the store, processor, bus or threads."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("store", "processor", "bus", "bulk", "columnar", "_writer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.columnar = self.bulk = None

    def _check_columns(self, first: Record | None) -> None:
        """Fail fast when a mapped column is missing from a CSV header or Parquet schema."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            self._check_header(pq.ParquetFile(self.path).schema_arrow.names)
        elif self.format == "csv" and first is not None and first.row is not None:
            self._check_header(first.row)

    def _check_header(self, header: Iterable[str]) -> None:
        """Fail when a column the mapping names is not among ``header``."""
        names = set(header)
        missing = sorted(c for c in self.mapping.columns() if c not in names)
        if missing:
            raise ImportError_(
                f"{self.path.name}: the mapping names columns the file does not have: "
                f"{', '.join(missing)}")

    # -- running -------------------------------------------------------------

    async def run(self, progress: Progress | None = None,
                  stop: asyncio.Event | None = None) -> ImportSummary:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        previous = None if self.restart else self.load_checkpoint()
        if previous is not None and previous.done:
            previous.seconds = 0.0
            return previous
        started = time.monotonic()
        if previous is None:
            summary = ImportSummary(
                import_id=self.import_id, file=str(self.path), source=self.source,
                format=self.format, kind=self.mapping.kind, mode=self.mode,
                rejects_file=str(self.rejects_path), event_time=time.time(),
                uids=await asyncio.to_thread(self._uid_scheme),
            )
            self.rejects_path.unlink(missing_ok=True)
            start = Position()
        else:
            summary = previous
            summary.resumed_from_line = summary.position.get("line", 0)
            start = Position(**summary.position)
            if self.rejects_path.exists():
                os.truncate(self.rejects_path, summary.rejects_bytes)
        self._use_uids(summary.uids)
        elapsed_before = summary.seconds
        total = await asyncio.to_thread(self.total)
        try:
            if self.columnar is not None:
                header, _ = await asyncio.to_thread(csv_header, self.path)
                self._check_header(header)
                records: Any = read_csv_blocks(
                    self.path, start, self.batch_size,
                    sorted(self.mapping.columns()))  # all in the header: checked
            else:
                records = read(self.path, self.format, start)
        except ReaderError as exc:
            raise ImportError_(str(exc)) from None
        checked = self.columnar is not None  # the header is checked above
        # every write of this import from one thread: the store's connection is per
        # thread and SQLite drops a connection's page cache whenever another connection
        # wrote, so writes taking turns on the default executor's threads would each
        # start from a cold cache (every page of an index of random keys read again)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="import-writer")
        rejects = open(self.rejects_path, "ab")  # noqa: SIM115 - closed below
        reader: ReadAhead | None = None
        fetch: Callable[[], tuple[Any, list[tuple[int, str, Any]], Position | None, int]] | None
        commit: Callable[[Any], BatchResult] | None = None
        ahead: asyncio.Future[Any] | None = None
        """The columnar path's next chunk, read and prepared while the store writes one."""
        try:
            if self.columnar is not None and self._reads_ahead(total - start.offset):
                reader = self._start_reader(start, summary.event_time)
            if self.columnar is None:
                fetch = None
            elif reader is not None:
                fetch = reader.next
                commit = partial(self.columnar.commit_ahead,
                                 reread=partial(self._reread, event_time=summary.event_time))
            else:
                fetch, commit = partial(self._next_prepared, records, summary.event_time), \
                    self.columnar.commit
            for _ in range(total + 2):  # each round consumes at least one record
                try:
                    if fetch is not None:
                        if ahead is None:
                            ahead = asyncio.ensure_future(self._fetch_logged(fetch))
                        prepared, rejected, pos, count = await ahead
                        ahead = None
                        first = None
                    else:
                        batch, rejected, pos, first = await asyncio.to_thread(
                            self._next_batch, records, summary.event_time)
                        count = len(batch)
                except (ReaderError, ReadAheadError) as exc:
                    raise ImportError_(str(exc)) from None
                if not checked:
                    await asyncio.to_thread(self._check_columns, first)
                    checked = True
                if not count and not rejected and pos is None:
                    break
                if fetch is not None and commit is not None:
                    if pos is not None:  # the other core reads and maps the next chunk
                        ahead = asyncio.ensure_future(self._fetch_logged(fetch))
                    self._count(summary, await self._write(commit, prepared))
                else:
                    await self._apply(batch, summary)
                for line, reason, raw in rejected:
                    rejects.write(orjson.dumps({"line": line, "reason": reason, "record": raw})
                                  + b"\n")
                rejects.flush()
                summary.rows += count + len(rejected)
                summary.rejected += len(rejected)
                if pos is not None:
                    summary.position = {"offset": pos.offset, "line": pos.line}
                summary.rejects_bytes = rejects.tell()
                summary.seconds = elapsed_before + time.monotonic() - started
                await asyncio.to_thread(self._save_checkpoint, summary)
                if progress is not None and pos is not None:
                    progress(pos.offset, total)
                if stop is not None and stop.is_set():
                    return summary
            summary.done = True
            summary.seconds = elapsed_before + time.monotonic() - started
            await asyncio.to_thread(self._save_checkpoint, summary)
            if progress is not None:
                progress(total, total)
            return summary
        finally:
            if reader is not None:
                reader.close()
            if ahead is not None:  # stopped or failed: a chunk read ahead is not applied
                with contextlib.suppress(Exception):
                    await ahead
            rejects.close()
            self._writer.shutdown(wait=False)

    async def _fetch_logged(self, fetch: Callable[[], tuple[Any, list[tuple[int, str, Any]],
                                                          Position | None, int]]
                            ) -> tuple[Any, list[tuple[int, str, Any]], Position | None, int]:
        """The columnar path's next chunk, its events appended to the log first when the
        import logs them (as the row path does, before they are applied): while the
        store writes the chunk before it, so the log's writer and the store's work at
        once."""
        item = await asyncio.to_thread(fetch)
        log = item[0].log
        if self.bus is not None and self.log_events and log:
            await self.bus.publish(EVENTS_TOPIC, log.messages())
        return item

    async def _write(self, apply: Callable[[Any], BatchResult], batch: Any) -> BatchResult:
        """``apply(batch)`` on the import's writing thread."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, apply, batch)

    def _next_batch(
        self, records: Any, event_time: float
    ) -> tuple[list[Event], list[tuple[int, str, Any]], Position | None, Record | None]:
        batch: list[Event] = []
        rejected: list[tuple[int, str, Any]] = []
        pos: Position | None = None
        first: Record | None = None
        now = time.time()
        for record, at in records:
            pos = at
            if first is None:
                first = record
            if record.row is None:
                rejected.append((record.line, record.error or "unreadable", record.raw))
            else:
                made = self.to_event(record, event_time, now)
                if isinstance(made, str):
                    rejected.append((record.line, made, record.row))
                else:
                    batch.append(made)
            if len(batch) + len(rejected) >= self.batch_size:
                break
        return batch, rejected, pos, first

    @staticmethod
    def _count(summary: ImportSummary, result: BatchResult) -> None:
        summary.imported += result.applied
        summary.duplicates += result.duplicates
        summary.profiles_created += result.profiles_created
        summary.merges += result.merges

    async def _apply(self, batch: list[Event], summary: ImportSummary) -> None:
        if not batch:
            return
        if self.bus is not None and (self.mode == "bus" or self.log_events):
            stored = await self.bus.publish(
                EVENTS_TOPIC, [Message(e.uid, e.partition_key, e.to_json()) for e in batch])
            if self.mode == "bus":
                new = sum(stored)
                summary.imported += new
                summary.duplicates += len(batch) - new
                return
        apply = self.bulk.apply if self.bulk is not None else self.processor.apply
        self._count(summary, await self._write(apply, batch))
        # the derived events wait in the store's outbox; the worker relays them
