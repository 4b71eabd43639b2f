"""New profiles as columns, packed for SQLite, and packed away from the writing thread.

:meth:`SQLiteTx.create_profile_columns` writes a chunk of new profiles with one
``INSERT ... SELECT`` per table whose values SQLite cuts out of a few packed BLOB
parameters (:class:`Packed`). Packing those parameters is Python work (joins,
encodings, padding: about 4 us per imported profile), done while the writer holds the
interpreter lock; an import that also reads and maps its next chunk on another thread
then makes the writer wait for the lock after every statement (measured: a busy Python
thread beside the writer tripled the writer's time per profile).

So packing is a pure function of the columns (:func:`profile_tables`), and
:func:`pack_new_profiles` adds the applied records to it: its result
(:class:`PackedProfiles`, bytes and SQL text) pickles, so the import's reading process
packs a chunk and the writer only runs the statements (:func:`write_packed`). If any of
the chunk's events is applied or any of its identifiers known, a primary key refuses
it, nothing of it stays, and the caller takes the per-row path.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import Any

from tessera.store.base import ProfileColumns

PACKED_ROWS = 256
"""From this many rows on, a bulk write goes through :class:`Packed`."""


class Packed:
    """Columns of a bulk insert packed into a few BLOB parameters.

    ``INSERT ... SELECT`` over a counter then cuts each row's values out with
    ``substr``: SQLite's own loop writes every row, without binding each value from
    Python (``executemany`` spends most of its time there) and without holding the
    GIL, so the import's next chunk is read and mapped on the other core meanwhile.
    A text column of equal widths is one BLOB; any other also has a BLOB of
    fixed-width decimal offsets; numbers are exact (:meth:`number`). A column it cannot
    pack makes :attr:`usable` false, and the caller binds the values itself.
    """

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.usable = True

    def const(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def text(self, values: Sequence[str] | Sequence[bytes], blob: bool = False,
             row: str = "i") -> str:
        """The SQL expression of row ``i``'s value: a parameter when every row has the
        same value, a one-letter code per row for up to 26 values, a slice of one BLOB
        when the values have one width or can be padded to one (no value ends with a
        space, padding at most half the bytes), else a slice found through offsets.
        Every extra SQL function per row costs: a trait row costs about 2.4 us to
        insert on the development machine, and the offsets added 1.5 us to it.

        ``row`` is the SQL expression of the value's index: ``(i/2)`` takes the values
        of a column of profiles for their links, two per profile."""
        n = len(values)
        if n >= 64 and len(set(values[:64])) <= 26:  # a sample first: most columns vary
            distinct = set(values)
            if len(distinct) == 1:
                (value,) = distinct
                return self.const(value.encode() if blob and isinstance(value, str) else value)
            if len(distinct) <= 26:
                code = {v: chr(97 + k) for k, v in enumerate(distinct)}
                cases = " ".join(
                    f"WHEN x'{ord(code[v]):02x}' THEN "
                    f"{self.const(v.encode() if blob and isinstance(v, str) else v)}"
                    for v in distinct)
                # a BLOB: substr of TEXT counts characters from the start (quadratic)
                letters = self.const("".join(map(code.__getitem__, values)).encode())
                return f"CASE substr({letters}, {row}+1, 1) {cases} END"
        try:
            if values and isinstance(values[0], str):
                joined = "".join(values).encode()  # type: ignore[arg-type]
                ascii_ = len(joined) == sum(lens := list(map(len, values)))  # chars = bytes
                if ascii_:
                    data = joined
                else:
                    enc = [v.encode() for v in values]  # type: ignore[union-attr]
                    data, lens = b"".join(enc), list(map(len, enc))
            else:
                ascii_ = False
                data = b"".join(values)  # type: ignore[arg-type]
                lens = list(map(len, values))
        except (UnicodeEncodeError, TypeError):  # a lone surrogate, a mix: executemany's
            self.usable = False
            return "NULL"
        cast = "{}" if blob else "CAST({} AS TEXT)"
        if lens and min(lens) == max(lens):
            w = lens[0]
            return cast.format(f"substr({self.const(data)}, {row}*{w}+1, {w})")
        widest = max(lens) if lens else 0
        if (widest * n <= len(data) * 3 // 2 and (ascii_ or not isinstance(values[0], str))
                and not ends_with_space(values)):
            if ascii_:
                data = (f"%-{widest}s" * n % tuple(values)).encode()
            else:
                data = b"".join(map(bytes.ljust, values, repeat(widest)))  # type: ignore[arg-type]
            padded = f"rtrim(substr({self.const(data)}, {row}*{widest}+1, {widest}), ' ')"
            return f"CAST({padded} AS BLOB)" if blob else padded
        ends = list(accumulate(lens))
        digits = len(str(ends[-1]))
        name = self.const(data)
        offsets = self.const((f"%0{digits}d" * (len(ends) + 1) % (0, *ends)).encode())
        start = f"CAST(substr({offsets}, {row}*{digits}+1, {digits}) AS INTEGER)"
        end = f"CAST(substr({offsets}, {row}*{digits}+{digits + 1}, {digits}) AS INTEGER)"
        return cast.format(f"substr({name}, {start}+1, {end}-{start})")

    def number(self, values: Sequence[float] | Sequence[int], row: str = "i") -> str:
        """The SQL expression of row ``row``'s number, exact: a parameter when every row
        has the same value, integers as text, other floats as integers times one power
        of two.

        SQLite's text-to-real conversion is not guaranteed to round exactly, so a float
        is never sent as text. Every value of a column of differing floats (the event
        times of an import with a time column) is ``v = M * 2**E``, ``E`` the column's
        smallest binary exponent less 53, so each ``M`` is an integer of at most 53
        significant bits: ``M`` goes as text and converts to a double exactly, the power
        of two is bound as a double, and their product is ``v`` exactly (IEEE
        multiplication rounds only what it cannot represent). Values more than a factor
        of 2**10 apart (``M`` would not fit 64 bits), non-finite ones or a power of two
        out of range make :attr:`usable` false."""
        first = values[0]
        if values.count(first) == len(values) and len(set(map(type, values))) == 1:
            return self.const(first)
        if all(type(v) is int for v in values):
            return f"CAST({self.text([str(v) for v in values], row=row)} AS INTEGER)"
        try:
            exponents = [math.frexp(v)[1] for v in values if v]
            low = min(exponents, default=0) - 53
            if max(exponents, default=0) - 53 - low > 10 or low < -1074 + 53:
                raise ValueError
            scale = math.ldexp(1.0, low)
            mantissas = [str(int(math.ldexp(v, -low))) for v in values]
        except (ValueError, OverflowError, TypeError):
            self.usable = False
            return "NULL"
        return f"(CAST({self.text(mantissas, row=row)} AS INTEGER) * {self.const(scale)})"

    def of_rows(self, values: Sequence[str] | Sequence[float], rows: list[int],
                per: int) -> str:
        """The SQL expression of ``values[rows[i]]`` (text, or numbers when ``values`` are):
        with ``per`` (``rows`` is each index ``per`` times in order, :func:`per_profile`)
        ``values`` themselves taken at row ``i/per``, else a copy picked by ``rows``."""
        picked = values if per else [values[r] for r in rows]
        row = f"(i/{per})" if per else "i"
        if values and not isinstance(values[0], str):
            return self.number(picked, row=row)  # type: ignore[arg-type]
        return self.text(picked, row=row)  # type: ignore[arg-type]

    def insert(self, conn: sqlite3.Connection, head: str, exprs: list[str], rows: int,
               order: str = "") -> None:
        """Rows in the given order, else in the order of the lists (``i`` rising: the
        counter's rowid order, no sort)."""
        ensure_counter(conn, rows)
        self.params["rows"] = rows
        conn.execute(f"{head} SELECT {', '.join(exprs)} FROM {COUNTER} WHERE i < :rows "
                     f"ORDER BY {order or 'i'}", self.params)


COUNTER = "temp.tessera_counter"
"""The integers ``0, 1, ...`` that :meth:`Packed.insert` generates its rows from."""


def ensure_counter(conn: sqlite3.Connection, rows: int) -> None:
    """Make ``COUNTER`` hold at least ``0 .. rows - 1`` on this connection.

    A range scan of an INTEGER PRIMARY KEY table costs less per row than a recursive
    CTE, whose every row goes through the CTE's queue: measured, 0.09 us a row instead
    of 0.25 (CPU time, a million rows), and an imported profile is about ten rows
    across the tables, so some 1.5 us a profile. Growing it costs about twice one CTE
    pass, once per connection. The table is the connection's own (TEMP), created on
    first use and grown by the missing range only, inside the caller's transaction:
    a rollback takes the growth back too, which is why its size is read from the
    table each time (the max of an INTEGER PRIMARY KEY is one B-tree descent), not
    remembered. ``temp_store=MEMORY`` made no measurable difference (a million rows is
    8 MB of pages, which a spill would put in a temporary file that is never synced),
    so the default stays."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {COUNTER} (i INTEGER PRIMARY KEY)")
    have = conn.execute(f"SELECT coalesce(max(i) + 1, 0) FROM {COUNTER}").fetchone()[0]
    if have < rows:
        conn.execute(f"INSERT INTO {COUNTER} (i) WITH RECURSIVE n(i) AS (SELECT ? UNION ALL "
                     f"SELECT i + 1 FROM n WHERE i + 1 < ?) SELECT i FROM n", (have, rows))


def ends_with_space(values: Sequence[str] | Sequence[bytes]) -> bool:
    """Whether a value ends with a space (padding would lose it)."""
    if values and isinstance(values[0], str):
        return any(map(str.endswith, values, repeat(" ")))  # type: ignore[arg-type]
    return any(map(bytes.endswith, values, repeat(b" ")))  # type: ignore[arg-type]


def per_profile(rows: list[int], n: int) -> int:
    """``m`` when ``rows`` (the profile of each link or trait) is ``m`` rows for each of
    the ``n`` profiles in order, ``[0]*m + [1]*m + ...``; else 0."""
    m, extra = divmod(len(rows), n)
    if extra or not m or rows[::m] != list(range(n)):
        return 0
    return m if sorted(rows) == rows and rows[m - 1::m] == rows[::m] else 0


Table = tuple[Packed, str, list[str], int, str]
"""One packed ``INSERT``: parameters, head, value expressions, rows, ``ORDER BY``."""


@dataclass(slots=True)
class PackedProfiles:
    """The statements that write a chunk of new profiles, with their packed parameters:
    the applied records and the identity links first, whose keys refuse a chunk the
    store contradicts (:func:`write_packed`)."""

    tables: list[Table] = field(default_factory=list)


def profile_tables(columns: ProfileColumns, at: float) -> list[Table] | None:
    """The profiles, links, traits and timeline entries of ``columns`` as packed inserts:
    links sorted by identifier so that their B-tree fills page by page, the rest in the
    order given (callers that create many pass rising profile ids). None when a column
    cannot be packed."""
    c = columns
    n = len(c.ids)
    tables: list[Table] = []
    if not n:
        return tables
    p = Packed()
    tables.append((p, "INSERT INTO profiles (id, created_at, updated_at, event_count)",
                   [p.text(c.ids), p.const(at), p.const(at), "1"], n, ""))
    if c.link_rows:
        p = Packed()
        m = per_profile(c.link_rows, n)  # mostly: every profile has as many links
        pid, uid = p.of_rows(c.ids, c.link_rows, m), p.of_rows(c.event_uids, c.link_rows, m)
        tables.append((p, "INSERT INTO identities (type, value, profile_id, event_uid, "
                       "linked_at, source, reason)",
                       [f"{p.text(c.link_types)} AS t", f"{p.text(c.link_values)} AS v",
                        pid, uid, p.const(at), p.const(c.source), "'deterministic'"],
                       len(c.link_rows), "t, v"))
    if c.trait_rows:
        p = Packed()
        rows = c.trait_rows
        m = per_profile(rows, n)
        pid, uid = p.of_rows(c.ids, rows, m), p.of_rows(c.event_uids, rows, m)
        times = p.of_rows(c.times, rows, m)
        tables.append((p, "INSERT OR REPLACE INTO traits (profile_id, name, value, source, "
                       "time, priority, event_uid)",
                       [pid, p.text(c.trait_names), p.text(c.trait_values, blob=True),
                        p.const(c.source), times, p.number(c.trait_priorities), uid],
                       len(rows), ""))
    p = Packed()
    tables.append((p, "INSERT OR IGNORE INTO timeline (profile_id, time, event_uid, type, "
                   "source, received_at, event)",
                   [p.text(c.ids), p.number(c.times),
                    p.text(c.event_uids), p.text(c.types), p.const(c.source),
                    p.number(c.received_at), p.text(c.documents, blob=True)], n, ""))
    if not all(t[0].usable for t in tables):
        return None
    return tables


def pack_new_profiles(columns: ProfileColumns, at: float) -> PackedProfiles | None:
    """:func:`profile_tables` and the applied records of ``columns``, for
    :func:`write_packed`: what the import's reading process hands the writer (the
    store's :meth:`~tessera.store.base.Store.column_packer`). None when a column cannot
    be packed."""
    tables = profile_tables(columns, at)
    if tables is None or not columns.ids:
        return None
    p = Packed()
    uid = p.text(columns.event_uids)
    if not p.usable:
        return None
    applied: Table = (p, "INSERT INTO applied (event_uid, at)", [f"{uid} AS u", p.const(at)],
                      len(columns.ids), "u")
    links = [t for t in tables if t[1].startswith("INSERT INTO identities")]
    rest = [t for t in tables if not t[1].startswith("INSERT INTO identities")]
    return PackedProfiles([applied, *links, *rest])


def write_tables(conn: sqlite3.Connection, tables: list[Table]) -> None:
    for packed, head, exprs, rows, order in tables:
        packed.insert(conn, head, exprs, rows, order)


def write_packed(conn: sqlite3.Connection, packed: PackedProfiles) -> bool:
    """Write ``packed`` unless the store contradicts it; whether it was written.

    The applied records go first, then the identity links: an event already applied or
    an identifier already known fails its primary key, and the chunk's writes are
    rolled back to before the first (a savepoint in the caller's transaction), for the
    caller's per-row path. Asking first cost as much again: the keys are checked by
    the inserts anyway."""
    conn.execute("SAVEPOINT packed_profiles")
    try:
        write_tables(conn, packed.tables)
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO packed_profiles")
        conn.execute("RELEASE packed_profiles")
        return False
    conn.execute("RELEASE packed_profiles")
    return True
