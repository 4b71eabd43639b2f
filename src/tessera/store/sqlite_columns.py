"""New profiles as columns, packed for SQLite, and packed away from the writing thread.

:meth:`SQLiteTx.create_profile_columns` writes a chunk of new profiles with one
``INSERT ... SELECT`` per table whose values SQLite cuts out of a few packed BLOB
parameters (:class:`.sqlite._Packed`). Packing those parameters is Python work (joins,
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

from tessera.store.base import ProfileColumns
from tessera.store.sqlite import _Packed, _per_profile

Table = tuple[_Packed, str, list[str], int, str]
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
    p = _Packed()
    tables.append((p, "INSERT INTO profiles (id, created_at, updated_at, event_count)",
                   [p.text(c.ids), p.const(at), p.const(at), "1"], n, ""))
    if c.link_rows:
        p = _Packed()
        m = _per_profile(c.link_rows, n)  # mostly: every profile has as many links
        pid, uid = p.of_rows(c.ids, c.link_rows, m), p.of_rows(c.event_uids, c.link_rows, m)
        tables.append((p, "INSERT INTO identities (type, value, profile_id, event_uid, "
                       "linked_at, source, reason)",
                       [f"{p.text(c.link_types)} AS t", f"{p.text(c.link_values)} AS v",
                        pid, uid, p.const(at), p.const(c.source), "'deterministic'"],
                       len(c.link_rows), "t, v"))
    if c.trait_rows:
        p = _Packed()
        rows = c.trait_rows
        m = _per_profile(rows, n)
        pid, uid = p.of_rows(c.ids, rows, m), p.of_rows(c.event_uids, rows, m)
        times = numbers(p, c.times if m else [c.times[r] for r in rows],
                        f"(i/{m})" if m else "i")
        tables.append((p, "INSERT OR REPLACE INTO traits (profile_id, name, value, source, "
                       "time, priority, event_uid)",
                       [pid, p.text(c.trait_names), p.text(c.trait_values, blob=True),
                        p.const(c.source), times, p.number(c.trait_priorities), uid],
                       len(rows), ""))
    p = _Packed()
    tables.append((p, "INSERT OR IGNORE INTO timeline (profile_id, time, event_uid, type, "
                   "source, received_at, event)",
                   [p.text(c.ids), numbers(p, c.times),
                    p.text(c.event_uids), p.text(c.types), p.const(c.source),
                    numbers(p, c.received_at), p.text(c.documents, blob=True)], n, ""))
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
    p = _Packed()
    uid = p.text(columns.event_uids)
    if not p.usable:
        return None
    applied: Table = (p, "INSERT INTO applied (event_uid, at)", [f"{uid} AS u", p.const(at)],
                      len(columns.ids), "u")
    links = [t for t in tables if t[1].startswith("INSERT INTO identities")]
    rest = [t for t in tables if not t[1].startswith("INSERT INTO identities")]
    return PackedProfiles([applied, *links, *rest])


def numbers(p: _Packed, values: Sequence[float], row: str = "i") -> str:
    """The SQL expression of row ``row``'s value of a column of numbers, exact.

    :meth:`_Packed.number` takes one value for every row, or integers; a column of
    differing floats (the event times of an import with a time column) it cannot
    pack, since SQLite's text-to-real conversion is not guaranteed to round exactly.
    Here every value is an integer times one power of two, ``v = M * 2**E`` (``E`` the
    column's smallest binary exponent less 53, so each ``M`` is an integer of at most
    53 significant bits): ``M`` goes as text and converts to a double exactly, the
    power of two is bound as a double, and their product is ``v`` exactly (IEEE
    multiplication rounds only what it cannot represent). Values more than a factor
    of 2**10 apart (``M`` would not fit 64 bits), non-finite ones or a power of two
    out of range leave the column unpackable, as before."""
    first = values[0]
    if values.count(first) == len(values) and len(set(map(type, values))) == 1:
        return p.const(first)
    if all(type(v) is int for v in values):
        return p.number(values, row=row)
    try:
        exponents = [math.frexp(v)[1] for v in values if v]
        low = min(exponents, default=0) - 53
        if max(exponents, default=0) - 53 - low > 10 or low < -1074 + 53:
            raise ValueError
        scale = math.ldexp(1.0, low)
        mantissas = [str(int(math.ldexp(v, -low))) for v in values]
    except (ValueError, OverflowError, TypeError):
        p.usable = False
        return "NULL"
    return f"(CAST({p.text(mantissas, row=row)} AS INTEGER) * {p.const(scale)})"


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
