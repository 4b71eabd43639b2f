"""Warehouse export, SQL, partitioned Parquet, and SQL traits synced incrementally."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.config import parse_config
from tessera.events.envelope import Event
from tessera.runtime import Runtime
from tessera.warehouse import SqlTrait, Warehouse

CONFIG = parse_config({
    "sources": [{"name": "web", "write_key": "wk_web_123"},
                {"name": "warehouse", "write_key": "wk_warehouse_1", "priority": 5}],
})


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(CONFIG, tmp_path / "data")
    await rt.start()
    events = [Event(id=str(i), source="t", type="order" if i % 2 else "visit",
                    time=1_700_000_000 + i * 86_400, received_at=1.0, source_name="web",
                    data={"traits": {"n": i}}, identifiers=[("email", f"u{i % 3}@x.com")])
              for i in range(9)]
    rt.processor.apply(events)
    try:
        yield rt
    finally:
        await rt.close()


async def test_export_tables_and_partitioned_parquet(runtime: Runtime) -> None:
    wh = Warehouse(runtime.data_dir)
    report = wh.export(runtime.store)
    assert report.rows["profiles"] == 3 and report.rows["events"] == 9
    assert report.rows["identities"] == 3
    _, rows = wh.sql("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")
    assert rows == [("order", 4), ("visit", 5)]
    days = sorted(p.name for p in (wh.parquet_dir / "events").iterdir())
    assert len(days) == 9 and days[0] == "day=2023-11-14"
    assert pq.read_table(wh.parquet_dir / "profiles.parquet").num_rows == 3
    again = wh.export(runtime.store)           # a refresh replaces, never appends
    assert again.rows["events"] == 9
    wh.close()


async def test_sql_traits_sync_changed_rows_only(runtime: Runtime, tmp_path: Path) -> None:
    wh = Warehouse(runtime.data_dir)
    wh.export(runtime.store, parquet=False)
    scores = tmp_path / "scores.parquet"
    pids = sorted(runtime.store.iter_profile_ids())
    pq.write_table(pa.table({"profile_id": pids, "score": [0.1, 0.2, 0.3]}), scores)
    specs = [
        SqlTrait(name="order_count", source="warehouse",
                 sql="SELECT profile_id, count(*) FILTER (WHERE type='order') AS value "
                     "FROM events GROUP BY profile_id"),
        SqlTrait(name="churn_score", source="warehouse",
                 sql=f"SELECT profile_id, score AS value FROM read_parquet('{scores}')"),
    ]
    first = wh.sync_traits(runtime.store, CONFIG, specs)
    assert [(r.rows, r.changed, r.written) for r in first] == [(3, 3, 3), (3, 3, 3)]
    profile = runtime.store.get_profile(pids[0])
    assert profile is not None
    assert profile.traits["churn_score"].value == 0.1
    assert profile.traits["churn_score"].source == "warehouse"
    counts = {p: runtime.store.get_profile(p).traits["order_count"].value  # type: ignore
              for p in pids}
    assert sorted(counts.values()) == [1, 1, 2]
    again = wh.sync_traits(runtime.store, CONFIG, specs)
    assert [(r.changed, r.written) for r in again] == [(0, 0), (0, 0)]
    pq.write_table(pa.table({"profile_id": pids, "score": [0.1, 0.9, 0.3]}), scores)
    third = wh.sync_traits(runtime.store, CONFIG, specs)
    assert [(r.changed, r.written) for r in third] == [(0, 0), (1, 1)]
    assert runtime.store.get_profile(pids[1]).traits["churn_score"].value == 0.9  # type: ignore
    with pytest.raises(ValueError, match="profile_id and value"):
        wh.sync_traits(runtime.store, CONFIG, [SqlTrait(name="x", sql="SELECT 1 AS y")])
    wh.close()
