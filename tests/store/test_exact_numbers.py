"""Numbers packed for SQLite come back exact (tessera.store.sqlite_columns.Packed.number)."""

from __future__ import annotations

import random
import sqlite3
import struct

import pytest

from tessera.store.sqlite_columns import Packed


def through_sqlite(values: list[float]) -> list[float] | None:
    """``values`` packed by :meth:`Packed.number` and read back from SQLite, or None when
    the column could not be packed."""
    p = Packed()
    expr = p.number(values)
    if not p.usable:
        return None
    conn = sqlite3.connect(":memory:")
    params = {**p.params, "rows": len(values)}
    return [r[0] for r in conn.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i+1 < :rows) "
        f"SELECT {expr} FROM n", params)]


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


@pytest.mark.parametrize("seed", range(5))
def test_differing_floats_come_back_bit_for_bit(seed: int) -> None:
    """Event times with microseconds, negative values and zero in one column: SQLite
    returns exactly the doubles given, not the nearest its text conversion finds."""
    rng = random.Random(seed)
    times = [1_700_000_000 + rng.random() * 10_000_000 for _ in range(2000)]
    times += [0.0, -times[0], times[1] / 3, 1_234_567_890.1234567]
    back = through_sqlite(times)
    assert back is not None and bits(back) == bits(times)


def test_constant_and_integer_columns_keep_their_types() -> None:
    assert through_sqlite([2.5] * 300) == [2.5] * 300
    ints = list(range(300))
    back = through_sqlite(ints)  # type: ignore[arg-type]
    assert back == ints and all(type(v) is int for v in back)


@pytest.mark.parametrize("values", [
    [1.0, 2.0 ** 40],                 # too far apart for one 64-bit multiple of 2**E
    [1.0, float("inf")],
    [1.0, float("nan")],
    [1e-310, 2e-310],                 # subnormal: no exact power of two to scale by
])
def test_columns_that_cannot_be_exact_are_refused(values: list[float]) -> None:
    assert through_sqlite(values) is None
