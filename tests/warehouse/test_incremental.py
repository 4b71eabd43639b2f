"""Incremental export (changed rows only, equal to a full refresh) and segment memberships."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tessera.config import parse_config
from tessera.events.envelope import Event
from tessera.personalization.state.sqlite import SQLiteState
from tessera.runtime import Runtime
from tessera.warehouse import SqlTrait, Warehouse
from tessera.warehouse.export import TABLES

CONFIG = parse_config({
    "sources": [{"name": "web", "write_key": "wk_web_123"},
                {"name": "warehouse", "write_key": "wk_warehouse_1", "priority": 5}],
})
DAY = 86_400


def event(i: int, email: str, kind: str = "visit", **more: str) -> Event:
    return Event(id=str(i), source="t", type=kind, time=1_700_000_000 + (i % 5) * DAY,
                 received_at=1.0, source_name="web", data={"traits": {"n": i}},
                 identifiers=[("email", email), *more.items()])


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(CONFIG, tmp_path / "data")
    await rt.start()
    rt.processor.apply([event(i, f"u{i % 20}@x.com", "order" if i % 3 else "visit")
                        for i in range(60)])
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def state(tmp_path: Path) -> SQLiteState:
    st = SQLiteState(tmp_path / "personalization.db")
    st.migrate()
    return st


def contents(wh: Warehouse) -> dict[str, list[tuple[Any, ...]]]:
    return {t: wh.sql(f"SELECT * FROM {t} ORDER BY ALL")[1] for t in TABLES}


def parquet_events(wh: Warehouse) -> list[tuple[Any, ...]]:
    table = pq.read_table(wh.parquet_dir / "events")
    rows = table.select(["event_uid", "profile_id", "type", "day"]).to_pylist()
    return sorted((r["event_uid"], r["profile_id"], r["type"], str(r["day"])) for r in rows)


def full_copy(rt: Runtime, tmp_path: Path, state: SQLiteState | None) -> Warehouse:
    """A full refresh of the same store into a warehouse of its own."""
    other = Warehouse(tmp_path / "full")
    other.export(rt.store, memberships=state, full=True)
    return other


async def test_second_export_writes_only_the_changes_and_equals_a_full_refresh(
        runtime: Runtime, tmp_path: Path, state: SQLiteState) -> None:
    wh = Warehouse(runtime.data_dir)
    first = wh.export(runtime.store, memberships=state)
    assert first.mode == "full" and first.rows["events"] == 60 and first.rows["profiles"] == 20
    nothing = wh.export(runtime.store, memberships=state)
    assert nothing.mode == "incremental"
    assert sum(nothing.written.values()) == 0           # re-reading the overlap writes nothing

    # three new events: one new person, two for known people (new trait values)
    runtime.processor.apply([event(100, "new@x.com"), event(101, "u1@x.com", "order"),
                             event(102, "u2@x.com")])
    second = wh.export(runtime.store, memberships=state)
    assert second.mode == "incremental"
    assert second.written["events"] == 3
    # profiles: 1 new row, 2 replaced rows (each update = delete + insert)
    assert second.written["profiles"] == 1 + 2 * 2
    # traits: n is one row per profile, the new one's plus the two changed values
    assert second.written["traits"] == 1 + 2 * 2
    assert second.written["identities"] == 1 and second.written["merges"] == 0
    assert second.rows["events"] == 63

    reference = full_copy(runtime, tmp_path, state)
    assert contents(wh) == contents(reference)
    assert parquet_events(wh) == parquet_events(reference)
    reference.close()
    wh.close()


async def test_merges_and_sql_traits_reach_the_incremental_export(
        runtime: Runtime, tmp_path: Path) -> None:
    wh = Warehouse(runtime.data_dir)
    wh.export(runtime.store)
    # u3 and u4 become one person: u4's events move to the survivor
    runtime.processor.apply([event(200, "u3@x.com", user_id="joint"),
                             event(201, "u4@x.com", user_id="joint")])
    survivor = runtime.store.resolve("email:u4@x.com")
    assert survivor == runtime.store.resolve("email:u3@x.com")
    report = wh.export(runtime.store)
    assert report.mode == "incremental" and report.written["merges"] == 1
    _, owners = wh.sql("SELECT DISTINCT e.profile_id FROM events e JOIN identities i "
                       "ON i.profile_id = e.profile_id WHERE i.value IN ('u3@x.com', 'u4@x.com')")
    assert owners == [(survivor,)]
    # a SQL trait written back touches its profiles, so the next export carries it
    spec = SqlTrait(name="orders", sql="SELECT profile_id, count(*) AS value FROM events "
                                       "WHERE type = 'order' GROUP BY 1")
    (synced,) = wh.sync_traits(runtime.store, runtime.config, [spec])
    assert synced.written == 20 - 1
    after = wh.export(runtime.store)
    assert after.written["traits"] == 19 and after.written["events"] == 0
    reference = full_copy(runtime, tmp_path, None)
    mine, theirs = contents(wh), contents(reference)
    for table in TABLES:
        if table != "segment_memberships":
            assert mine[table] == theirs[table], table
    assert parquet_events(wh) == parquet_events(reference)
    reference.close()
    wh.close()


async def test_rebuild_from_the_log_leaves_no_stale_profiles(runtime: Runtime) -> None:
    wh = Warehouse(runtime.data_dir)
    wh.export(runtime.store, parquet=False)
    old = {r[0] for r in wh.sql("SELECT profile_id FROM profiles")[1]}
    runtime.store.reset()
    runtime.processor.apply([event(i, f"u{i % 20}@x.com") for i in range(60)])
    report = wh.export(runtime.store, parquet=False)
    assert report.mode == "incremental"
    now = {r[0] for r in wh.sql("SELECT profile_id FROM profiles")[1]}
    assert now == set(runtime.store.iter_profile_ids()) and not now & old
    assert report.rows["events"] == 60
    wh.close()


async def test_segment_memberships_as_table_and_parquet(
        runtime: Runtime, tmp_path: Path, state: SQLiteState) -> None:
    pids = sorted(runtime.store.iter_profile_ids())
    with state.transaction() as tx:
        tx.enter("vip", pids[0], 1_700_000_100.0)
        tx.enter("vip", pids[1], 1_700_000_200.0)
        tx.enter("churn_risk", pids[1], 1_700_000_300.0)
    wh = Warehouse(runtime.data_dir)
    report = wh.export(runtime.store, memberships=state)
    assert report.rows["segment_memberships"] == 3
    assert wh.sql("SELECT profile_id, segment, entered_at FROM segment_memberships "
                  "ORDER BY segment, profile_id")[1] == [
        (pids[1], "churn_risk", 1_700_000_300.0),
        (pids[0], "vip", 1_700_000_100.0), (pids[1], "vip", 1_700_000_200.0)]
    on_disk = pq.read_table(wh.parquet_dir / "segment_memberships.parquet").to_pylist()
    assert sorted((r["segment"], r["profile_id"]) for r in on_disk) == [
        ("churn_risk", pids[1]), ("vip", pids[0]), ("vip", pids[1])]
    # an exit and an entry: two rows written, the Parquet file follows
    with state.transaction() as tx:
        tx.leave("vip", pids[0])
        tx.enter("vip", pids[2], 1_700_000_400.0)
    again = wh.export(runtime.store, memberships=state)
    assert again.mode == "incremental" and again.written["segment_memberships"] == 2
    assert {(r["segment"], r["profile_id"]) for r in pq.read_table(
        wh.parquet_dir / "segment_memberships.parquet").to_pylist()} == {
        ("churn_risk", pids[1]), ("vip", pids[1]), ("vip", pids[2])}
    # erasure removes the person's memberships too
    assert wh.erase([pids[1]]) > 0
    assert wh.sql("SELECT count(*) FROM segment_memberships WHERE profile_id = "
                  f"'{pids[1]}'")[1] == [(0,)]
    wh.close()
