"""The PostgreSQL store's own array parameters: what goes in comes back, NULLs included."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.adapt import PyFormat, Transformer

from tessera.store.postgres import (
    Bigints,
    Blobs,
    Floats,
    JsonValues,
    Texts,
    register_array_dumpers,
)
from tests.services import require_postgres

pytestmark = pytest.mark.services

CASES: list[tuple[Any, str]] = [
    (Texts(["a", "é", None, 'x"y{},\\', ""]), "text[]"),
    (Texts([]), "text[]"),
    (Floats([1.5, 1e300, -0.0, None, 3]), "float8[]"),
    (Floats([1.0, 2.25]), "float8[]"),
    (Floats([]), "float8[]"),
    (Bigints([1, -(2**63), 2**63 - 1]), "bigint[]"),
    (Bigints([None, 3]), "bigint[]"),
    (Blobs([b"\x00\x01", None, b"", bytearray(b"ab")]), "bytea[]"),
    (JsonValues([{"a": 1}, [1, 2], "x", None, 1.5, True]), "jsonb[]"),
]


@pytest.mark.parametrize(("value", "type_"), CASES)
def test_arrays_round_trip(value: Any, type_: str) -> None:
    with psycopg.connect(require_postgres(), autocommit=True, connect_timeout=5) as conn:
        register_array_dumpers(conn)
        row = conn.execute(f"SELECT %b::{type_}, array_length(%b::{type_}, 1)",
                           [value, value]).fetchone()
    assert row is not None
    assert row[0] == [bytes(v) if isinstance(v, bytearray) else v for v in value]
    assert row[1] == (len(value) or None)


def test_the_same_bytes_as_psycopgs_own_list_dumper() -> None:
    with psycopg.connect(require_postgres(), autocommit=True, connect_timeout=5) as conn:
        plain = Transformer(conn)
        register_array_dumpers(conn)
        ours = Transformer(conn)
        for value in (Texts(["a", "bc", None]), Floats([1.5, 2.0]), Bigints([1, 2**40])):
            theirs = plain.dump_sequence([list(value)], [PyFormat.BINARY])[0]
            assert ours.dump_sequence([value], [PyFormat.BINARY])[0] == theirs
