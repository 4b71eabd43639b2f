"""Python destinations (function and entry point) and the file sink (JSONL, Parquet)."""

from __future__ import annotations

import asyncio
from importlib.metadata import EntryPoint
from pathlib import Path

import orjson
import pytest

from tessera.activation import destinations
from tests.activation import sink
from tests.activation.helpers import FAST_RETRY, config_with, running, wait_for


@pytest.fixture(autouse=True)
def _reset_sink() -> None:
    sink.RECEIVED.clear()
    sink.FAILURES["left"] = 0


async def test_python_function_with_retries(tmp_path: Path) -> None:
    sink.FAILURES["left"] = 2
    sub = {"name": "py", "shape": "notification", "retry": FAST_RETRY,
           "destination": {"type": "python", "function": "tests.activation.sink:collect",
                           "options": {"region": "eu"}}}
    async with running(config_with(subscriptions=[sub]), tmp_path) as h:
        event = await h.send({"email": "a@example.com"}, "t.one")
        await wait_for(lambda: len(sink.RECEIVED) == 1)
        def counted() -> bool:
            state = h.activation.state.get("py")
            return state is not None and state.failed_attempts == 2

        await wait_for(counted)
    body, options = sink.RECEIVED[0]
    assert options == {"region": "eu"}
    assert body["data"]["uid"] == event.uid
    assert body["data"]["profile_id"] is None  # a notification does not wait for the profile


async def test_entry_point_and_permanent_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="crm", value="tests.activation.sink:collect_async",
                    group=destinations.ENTRY_POINT_GROUP)

    def fake_entry_points(group: str) -> list[EntryPoint]:
        return [ep] if group == destinations.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(destinations, "entry_points", fake_entry_points)
    sub = {"name": "ep", "shape": "event", "retry": FAST_RETRY,
           "destination": {"type": "python", "entry_point": "crm"}}
    async with running(config_with(subscriptions=[sub]), tmp_path) as h:
        await h.send({"email": "a@example.com", "reject": True}, "t.one")
        await h.send({"email": "a@example.com"}, "t.two")
        await wait_for(lambda: len(sink.RECEIVED) == 1)
        for _ in range(100):
            letters = await h.runtime.bus.dead_letters("sub:ep")
            if letters:
                break
            await asyncio.sleep(0.01)
    assert [e["type"] for e, _ in sink.RECEIVED] == ["t.two"]
    assert len(letters) == 1 and "refuses" in letters[0].error
    assert "after 1 attempt(s)" in letters[0].error


async def test_unknown_entry_point_is_reported_not_fatal(tmp_path: Path) -> None:
    subs = [{"name": "broken", "destination": {"type": "python", "entry_point": "nope"}},
            {"name": "file", "shape": "event", "destination": {"type": "file",
                                                               "path": "out/e.jsonl"}}]
    cfg = config_with(subscriptions=subs)
    async with running(cfg, tmp_path) as h:
        await wait_for(lambda: "file" in h.activation.running)
        await h.send({"email": "a@example.com"}, "t.one")
        await wait_for(lambda: (tmp_path / "out" / "e.jsonl").exists()
                       and (tmp_path / "out" / "e.jsonl").read_bytes().count(b"\n") == 1)
        state = h.activation.state.get("broken")
    assert state is not None and "no entry point 'nope'" in (state.last_error or "")


async def test_jsonl_file_sink(tmp_path: Path) -> None:
    sub = {"name": "archive", "shape": "fat",
           "destination": {"type": "file", "path": "archive.jsonl"}}
    async with running(config_with(subscriptions=[sub]), tmp_path) as h:
        for n in range(5):
            await h.send({"email": "a@example.com", "n": n}, "t.step")
        path = tmp_path / "archive.jsonl"
        await wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") == 5)
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["data"]["event"]["n"] for x in lines] == [0, 1, 2, 3, 4]
    assert lines[-1]["data"]["profile"]["identifiers"]["email"] == ["a@example.com"]


async def test_parquet_file_sink(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    sub = {"name": "lake", "shape": "event",
           "destination": {"type": "file", "path": "lake", "format": "parquet",
                           "flush_seconds": 0.2}}
    async with running(config_with(subscriptions=[sub]), tmp_path) as h:
        for n in range(7):
            await h.send({"email": f"p{n}@example.com", "n": n}, "t.step")
        await wait_for(lambda: sum(pq.read_table(f).num_rows
                                   for f in (tmp_path / "lake").glob("*.parquet")) == 7)
    rows = [r for f in sorted((tmp_path / "lake").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert sorted(orjson.loads(r["cloudevent"])["data"]["n"] for r in rows) == list(range(7))
    assert all(r["type"] == "t.step" and r["msg_id"].startswith("msg_") for r in rows)
