"""Streaming readers for CSV, JSONL and Parquet that can resume at a position.

Each reader yields one :class:`Record` at a time with the position just after
it, so memory stays flat whatever the file's size, and an interrupted import
restarts exactly after the last committed record. CSV and JSONL positions are
byte offsets (the file is re-opened and sought); Parquet positions are row
numbers (the reader skips the row groups before it).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson

Format = Literal["csv", "jsonl", "parquet"]

SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH = 8192


class ReaderError(Exception):
    """The file cannot be read at all (missing, no header, not Parquet)."""


@dataclass(slots=True)
class Record:
    line: int
    """Line of the record's start (CSV, JSONL; 1-based, header included), or row (Parquet)."""
    row: dict[str, Any] | None
    error: str | None = None
    raw: str | None = None
    """The record's text, kept only when it is rejected."""


@dataclass(slots=True)
class Position:
    offset: int = 0
    """Byte offset after the last record (CSV, JSONL) or rows read (Parquet)."""
    line: int = 0
    """Lines (CSV, JSONL) or rows (Parquet) consumed up to ``offset``."""


def detect_format(path: Path, explicit: str | None = None) -> Format:
    if explicit:
        if explicit not in ("csv", "jsonl", "parquet"):
            raise ReaderError(f"unknown format {explicit!r}; use csv, jsonl or parquet")
        return explicit  # type: ignore[return-value]
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ReaderError(f"{path.name}: cannot tell the format from the suffix; give --format")
    return found


def csv_delimiter(path: Path) -> str:
    """Tab for a ``.tsv`` file, else comma."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read(path: Path, fmt: Format, start: Position | None = None,
         delimiter: str | None = None) -> Iterator[tuple[Record, Position]]:
    start = start or Position()
    if fmt == "csv":
        return _read_csv(path, start, delimiter or csv_delimiter(path))
    if fmt == "jsonl":
        return _read_jsonl(path, start)
    return _read_parquet(path, start)


def _counted_lines(fh: IO[bytes], state: list[int]) -> Iterator[str]:
    """The file's lines as text, counting into ``state`` the bytes and the lines consumed
    (the position an import resumes from)."""
    for raw in fh:
        state[0] += len(raw)
        state[1] += 1
        yield raw.decode("utf-8", "replace")


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ReaderError(f"{path}: cannot open: {exc.strerror}") from None


def _header(reader: Iterator[list[str]], path: Path) -> list[str]:
    """The CSV header's column names (no byte order mark, no surrounding spaces)."""
    try:
        header = next(reader)
    except StopIteration:
        raise ReaderError(f"{path.name}: empty file, no header row") from None
    except csv.Error as exc:
        raise ReaderError(f"{path.name}: unreadable header: {exc}") from None
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise ReaderError(f"{path.name}: the header names a column twice")
    return header


def _read_csv(path: Path, start: Position, delimiter: str) -> Iterator[tuple[Record, Position]]:
    fh = _open(path)  # closed in the finally below
    state = [0, 0]  # bytes consumed, lines consumed

    try:
        reader = csv.reader(_counted_lines(fh, state), delimiter=delimiter, strict=True)
        header = _header(reader, path)
        if start.offset > state[0]:
            fh.seek(start.offset)
            state[0], state[1] = start.offset, start.line
        width = len(header)
        size = path.stat().st_size
        for _ in range(size + 1):  # every round consumes at least one line (one byte)
            line = state[1] + 1
            before = state[0]
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield (Record(line, None, f"malformed CSV: {exc}", None),
                       Position(state[0], state[1]))
                continue
            pos = Position(state[0], state[1])
            if not row:
                continue  # a blank line is not a record
            if len(row) != width:
                text = _slice(path, before, state[0])
                yield Record(line, None, f"expected {width} fields, got {len(row)}", text), pos
                continue
            if any("\ufffd" in v for v in row):
                yield Record(line, None, "not valid UTF-8", _slice(path, before, state[0])), pos
                continue
            yield Record(line, dict(zip(header, row, strict=True))), pos
    finally:
        fh.close()


def _slice(path: Path, start: int, end: int, limit: int = 4096) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(min(end - start, limit)).decode("utf-8", "replace").rstrip("\r\n")


def _read_jsonl(path: Path, start: Position) -> Iterator[tuple[Record, Position]]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise ReaderError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        offset, line = start.offset, start.line
        fh.seek(offset)
        for raw in fh:
            offset += len(raw)
            line += 1
            pos = Position(offset, line)
            text = raw.strip()
            if not text:
                continue
            try:
                row = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                yield Record(line, None, f"invalid JSON: {exc}", _text(text)), pos
                continue
            if not isinstance(row, dict):
                yield Record(line, None, "not a JSON object", _text(text)), pos
                continue
            yield Record(line, row), pos
    finally:
        fh.close()


def _text(raw: bytes, limit: int = 4096) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _read_parquet(path: Path, start: Position) -> Iterator[tuple[Record, Position]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise ReaderError(f"{path.name}: not a readable Parquet file: {exc}") from None
    try:
        meta = pf.metadata
        groups: list[int] = []
        seen = 0  # rows in the row groups skipped whole
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if not groups and seen + n <= start.offset:
                seen += n
            else:
                groups.append(i)
        skip = start.offset - seen
        row_no = seen
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=groups):
            for row in batch.to_pylist():
                row_no += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield Record(row_no, row), Position(row_no, row_no)
    finally:
        pf.close()


# -- CSV in column blocks (the columnar import path) ------------------------------------


@dataclass(slots=True)
class Block:
    """A run of consecutive CSV records: as columns when every line of it is one plain
    record, else as the records the row reader yields (same lines, same rejects)."""

    end: Position
    """The position after the block's last record."""
    first_line: int = 0
    rows: int = 0
    columns: dict[str, list[str]] | None = None
    """Column -> the values of its ``rows`` records, lines ``first_line`` onwards."""
    table: Any = None
    """The block's every column (a pyarrow table), for the whole record of a reject."""
    records: list[Record] | None = None


def csv_header(path: Path, delimiter: str | None = None) -> tuple[list[str], Position]:
    """The header as :func:`read` sees it, and the position after it."""
    state = [0, 0]  # bytes consumed, lines consumed
    with _open(path) as fh:
        header = _header(csv.reader(_counted_lines(fh, state),
                                    delimiter=delimiter or csv_delimiter(path), strict=True),
                         path)
    return header, Position(state[0], state[1])


def read_csv_blocks(path: Path, start: Position, rows: int, columns: list[str],
                    delimiter: str | None = None) -> Iterator[Block]:
    """The CSV file from ``start`` in blocks of up to ``rows`` records.

    A block whose bytes hold no quote, carriage return, NUL, blank line or invalid
    UTF-8, and whose every line has the header's number of fields, is parsed by
    pyarrow into the wanted ``columns`` (C++, no object per row): there each line is
    exactly one record, so line numbers and byte offsets are the row reader's. Any
    other block is read by the row reader of :func:`read`, record by record, with its
    rejects; both kinds resume at a byte offset. Memory stays one block whatever the
    file's size.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    delim = delimiter or csv_delimiter(path)
    header, after = csv_header(path, delim)
    width = len(header)
    offset, line = (start.offset, start.line) if start.offset > after.offset else (
        after.offset, after.line)
    parse = pacsv.ParseOptions(delimiter=delim, quote_char=False, double_quote=False,
                               escape_char=False, newlines_in_values=False,
                               ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    size = path.stat().st_size
    guess = 256  # bytes per record, corrected by every block
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            data = fh.read(max(1 << 16, rows * guess * 2))
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if len(ends) >= rows:
                data = data[:int(ends[rows - 1]) + 1]
            elif offset + len(data) < size:
                # a record longer than the whole read goes to the row reader (data empty)
                data = data[:int(ends[-1]) + 1] if len(ends) else b""
            count = data.count(b"\n") + (0 if data.endswith(b"\n") else 1) if data else 0
            table = _plain_block(data, count, width, delim, header, parse, convert)
            if table is not None:
                guess = max(16, len(data) // max(1, count))
                yield Block(Position(offset + len(data), line + count), line + 1, count,
                            {c: table.column(c).to_pylist() for c in columns}, table)
                offset += len(data)
                line += count
                continue
            records: list[Record] = []
            stop = offset + max(len(data), 1)
            pos = Position(offset, line)
            for record, pos in read(path, "csv", Position(offset, line), delim):
                records.append(record)
                if pos.offset >= stop or len(records) >= rows:
                    break
            if pos.offset <= offset:
                return  # nothing more to read
            yield Block(pos, line + 1, len(records), records=records)
            offset, line = pos.offset, pos.line


def _plain_block(data: bytes, count: int, width: int, delim: str, header: list[str],
                 parse: Any, convert: Any) -> Any:
    """The block as a pyarrow table, or None when the row reader must read it."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    if not data or data.startswith((b"\n", b"\r\n")) or any(
            bad in data for bad in (b'"', b"\x00", b"\n\n", b"\n\r\n", b"\xef\xbf\xbd")):
        return None
    if data.count(b"\r") != data.count(b"\r\n"):  # \r\n ends a line as \n does; a lone \r
        return None                               # is the row reader's to judge
    if data.count(delim.encode()) != count * (width - 1):
        return None
    try:
        data.decode("utf-8")
        table = pacsv.read_csv(io.BytesIO(data),
                               read_options=pacsv.ReadOptions(column_names=header,
                                                              block_size=len(data) + 1),
                               parse_options=parse, convert_options=convert)
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    return table if table.num_rows == count else None
