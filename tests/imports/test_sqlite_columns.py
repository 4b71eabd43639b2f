"""The SQLite store writes a chunk's columns exactly as it writes the same profiles one by one.

Rows of the whole tables are compared, for the layouts the columnar import makes (as
many links and traits for every profile: the store takes the profile's values by
``i/m``) and for others (a profile with fewer), with per-row times.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from tessera.store.base import ProfileColumns
from tessera.store.sqlite import SQLiteStore

TABLES = {
    "profiles": "id, created_at, updated_at, event_count, merged_into",
    "identities": "type, value, profile_id, event_uid, linked_at, source, reason",
    "traits": "profile_id, name, value, source, time, priority, event_uid",
    "timeline": "profile_id, time, event_uid, type, source, received_at, event",
}


def columns(n: int, regular: bool, times: list[Any]) -> ProfileColumns:
    ids = [f"prf_{i:032x}" for i in range(n)]
    uids = [f"ev-{i}" for i in range(n)]       # of different widths: padded
    link_rows, link_types, link_values = [], [], []
    trait_rows, trait_names, trait_values, prios = [], [], [], []
    for i in range(n):
        short = not regular and i % 17 == 5
        for type_, value in [("email", f"p{i}@x.io"), ("member_number", f"M{i}")][
                :1 if short else 2]:
            link_rows.append(i)
            link_types.append(type_)
            link_values.append(value)
        for name, value in [("city", ["Oslo", "Tromsø"][i % 2]), ("n", i * 1.5),
                            ("note", "x" * (i % 50))][:2 if short else 3]:
            trait_rows.append(i)
            trait_names.append(name)
            trait_values.append(orjson.dumps(value).decode())
            prios.append(i % 3)
    return ProfileColumns(
        source="crm", ids=ids, event_uids=uids, types=["t"] * n, times=times,
        received_at=[9.0] * n,
        documents=[orjson.dumps({"id": i, "pad": "é" * (i % 3)}).decode() for i in range(n)],
        link_rows=link_rows, link_types=link_types, link_values=link_values,
        trait_rows=trait_rows, trait_names=trait_names, trait_values=trait_values,
        trait_priorities=prios)


def rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT {cols} FROM {t}").fetchall())
                for t, cols in TABLES.items()}
    finally:
        conn.close()


@pytest.mark.parametrize("regular", [True, False], ids=["regular", "irregular"])
@pytest.mark.parametrize("times", ["one", "integers", "floats"])
def test_columns_write_the_rows_profiles_write(tmp_path: Path, regular: bool,
                                               times: str) -> None:
    n = 300
    per_row = {"one": [5.0] * n, "integers": [1_700_000_000 + i for i in range(n)],
               "floats": [5.0 + i / 7 for i in range(n)]}[times]
    c = columns(n, regular, per_row)
    stores = {}
    for name in ("columns", "profiles"):
        store = SQLiteStore(tmp_path / f"{name}.db", synchronous="OFF")
        store.migrate()
        with store.transaction() as tx:
            if name == "columns":
                tx.create_profile_columns(c, 7.0)
            else:
                tx.create_profiles(c.profiles(), 7.0)
        store.close()
        stores[name] = rows(tmp_path / f"{name}.db")
    assert len(stores["columns"]["traits"]) == len(c.trait_rows)
    assert stores["columns"] == stores["profiles"]
