"""Batch imports: CSV, JSONL and Parquet, mapping, rejects, resume, dedupe, survivorship."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.imports.job import ImportError_, ImportJob, Progress
from tessera.imports.mapping import MappingError, parse_mapping
from tessera.imports.readers import Position, read
from tessera.runtime import Runtime

PROFILE_MAPPING = {
    "identifiers": {"email": "Email", "member_number": "MemberNo"},
    "traits": {"first_name": "FirstName", "lifetime_value": "LTV"},
    "types": {"lifetime_value": "float"},
}


def write_csv(path: Path, rows: list[list[Any]],
              header: tuple[str, ...] = ("Email", "MemberNo", "FirstName", "LTV")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def numbered(n: int, domain: str = "x.io") -> list[list[str]]:
    """``n`` rows of :func:`write_csv`'s four columns: ``u<i>@<domain>``, ``M<i>``, ``n``,
    ``<i>``."""
    return [[f"u{i}@{domain}", f"M{i}", "n", str(i)] for i in range(n)]


def stop_after(batches: int) -> tuple[asyncio.Event, Progress]:
    """A stop event and a progress callback that sets it, as Ctrl-C would, once
    ``batches`` batches have committed."""
    stop = asyncio.Event()
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == batches:
            stop.set()

    return stop, progress


def job(runtime: Runtime, path: Path, mapping: dict[str, Any] | None = None,
        source: str = "crm", **kw: Any) -> ImportJob:
    return ImportJob(
        path=path, source=source, mapping=parse_mapping(mapping or PROFILE_MAPPING),
        store=runtime.store, processor=runtime.processor, extractor=runtime.extractor,
        bus=runtime.bus, work_dir=runtime.data_dir / "imports",
        known_sources={s.name for s in runtime.config.sources}, **kw)


def traits(runtime: Runtime, identifier: str) -> dict[str, Any]:
    pid = runtime.store.resolve(identifier)
    assert pid is not None, identifier
    profile = runtime.store.get_profile(pid)
    assert profile is not None
    return {n: t.value for n, t in profile.traits.items()}


def rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_csv_profiles_become_profiles_with_rejects_by_line(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "crm.csv", [
        [" Ann@Example.COM ", "M1", "ann", "12.5"],
        ["", "", "nobody", "1"],              # line 3: no identifier
        ["bob@example.com", "M2", "bob", "lots"],  # line 4: bad number
        ["null", "M3", "cy", ""],             # placeholder email dropped, member number kept
    ])
    with open(path, "a") as fh:
        fh.write("dee@example.com,M4,dee\n")   # line 6: a field short
    summary = await job(runtime, path).run()
    assert summary.done
    assert (summary.rows, summary.imported, summary.rejected) == (5, 2, 3)
    assert summary.profiles_created == 2
    assert traits(runtime, "email:ann@example.com") == {"first_name": "ann",
                                                        "lifetime_value": 12.5}
    assert traits(runtime, "member_number:M3") == {"first_name": "cy"}
    found = rejects(Path(summary.rejects_file))
    assert [(r["line"], r["reason"]) for r in found] == [
        (3, "no usable identifier"),
        (4, "lifetime_value: 'lots' is not a number"),
        (6, "expected 4 fields, got 3"),
    ]
    assert found[2]["record"] == "dee@example.com,M4,dee"


async def test_rows_of_one_person_merge_and_a_repeated_import_changes_nothing(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "crm.csv", [
        ["a@example.com", "", "ann", "1"],
        ["", "M1", "", "2"],
        ["a@example.com", "M1", "", ""],     # joins the two profiles
    ])
    first = await job(runtime, path).run()
    assert first.merges == 1
    pid = runtime.store.resolve("email:a@example.com")
    assert pid == runtime.store.resolve("member_number:M1")
    again = await job(runtime, path).run()          # finished: a no-op
    assert again.done and again.imported == 3 and again.seconds == 0.0
    restarted = await job(runtime, path, restart=True).run()
    assert (restarted.imported, restarted.duplicates) == (0, 3)
    assert runtime.store.counts()["events_applied"] == 3


async def test_source_priority_applies_to_imported_traits(
        runtime: Runtime, tmp_path: Path) -> None:
    mapping = {**PROFILE_MAPPING, "time_column": "At"}
    header = ("Email", "MemberNo", "FirstName", "LTV", "At")
    member = write_csv(tmp_path / "membership.csv",
                       [["a@example.com", "M1", "Anne", "", "2024-01-01T00:00:00Z"]], header)
    crm = write_csv(tmp_path / "crm.csv",
                    [["a@example.com", "", "Annie", "5", "2025-01-01T00:00:00Z"]], header)
    await job(runtime, member, mapping, source="membership").run()
    await job(runtime, crm, mapping, source="crm").run()
    # crm is newer but membership has the higher priority: its name survives
    assert traits(runtime, "email:a@example.com") == {"first_name": "Anne", "lifetime_value": 5.0}


async def test_jsonl_events_with_nested_columns_and_bad_lines(
        runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    lines = [
        {"type": "order.completed", "customer": {"email": "a@example.com"}, "total": "9.5",
         "at": 1700000000},
        {"type": "order.refunded", "customer": {"email": "a@example.com"}, "total": 3,
         "at": "2024-01-01T00:00:00Z"},
    ]
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines)
                     + b"{not json\n\n[1, 2]\n"
                     + orjson.dumps({"customer": {"email": "b@example.com"}, "at": "yesterday"}))
    mapping = {"kind": "events", "identifiers": {"email": "customer.email"},
               "event_type_column": "type", "event_type": "order.other",
               "properties": {"total": "total"}, "types": {"total": "float"},
               "time_column": "at"}
    summary = await job(runtime, path, mapping).run()
    assert (summary.imported, summary.rejected) == (2, 3)
    pid = runtime.store.resolve("email:a@example.com")
    assert pid is not None
    timeline = runtime.store.timeline(pid, 10)
    assert [(e.type, e.event["data"]["total"]) for e in timeline] == [
        ("order.refunded", 3.0), ("order.completed", 9.5)]   # newest first
    assert timeline[1].time == 1700000000.0
    reasons = [(r["line"], r["reason"].split(":")[0]) for r in rejects(Path(summary.rejects_file))]
    assert reasons == [(3, "invalid JSON"), (5, "not a JSON object"), (6, "at")]


async def test_parquet_import(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table({"Email": [f"u{i}@example.com" for i in range(50)],
                      "MemberNo": [f"M{i}" for i in range(50)],
                      "FirstName": ["x"] * 50, "LTV": [float(i) for i in range(50)]})
    pq.write_table(table, path, row_group_size=16)
    summary = await job(runtime, path, batch_size=7).run()
    assert (summary.rows, summary.imported, summary.profiles_created) == (50, 50, 50)
    assert traits(runtime, "member_number:M49")["lifetime_value"] == 49.0


def test_parquet_reader_resumes_in_the_middle_of_a_row_group(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"n": list(range(100))}), path, row_group_size=30)
    rows = [r.row["n"] for r, _ in read(path, "parquet", Position(45, 45)) if r.row]
    assert rows == list(range(45, 100))


def test_csv_reader_resumes_at_a_byte_offset_with_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('a,b\n1,"x\ny"\n2,z\n3,w\n')
    records = list(read(path, "csv"))
    assert [(r.line, r.row) for r, _ in records] == [
        (2, {"a": "1", "b": "x\ny"}), (4, {"a": "2", "b": "z"}), (5, {"a": "3", "b": "w"})]
    after_first = records[0][1]
    resumed = [(r.line, r.row["a"]) for r, _ in read(path, "csv", after_first) if r.row]
    assert resumed == [(4, "2"), (5, "3")]


async def test_an_interrupted_import_resumes_after_the_last_committed_batch(
        runtime: Runtime, tmp_path: Path) -> None:
    rows = numbered(100, "example.com")
    rows[5][0], rows[5][1] = "", ""      # one reject in the first batch
    rows[60][0], rows[60][1] = "", ""    # one after the interruption
    path = write_csv(tmp_path / "big.csv", rows)
    stop, progress = stop_after(3)

    first = await job(runtime, path, batch_size=10).run(progress=progress, stop=stop)
    assert not first.done and first.rows == 30 and first.imported == 29
    assert runtime.store.counts()["events_applied"] == 29
    second = await job(runtime, path, batch_size=10).run()
    assert second.done and second.resumed_from_line == 31
    assert (second.rows, second.imported, second.rejected, second.duplicates) == (100, 98, 2, 0)
    assert runtime.store.counts()["events_applied"] == 98
    assert [r["line"] for r in rejects(Path(second.rejects_file))] == [7, 62]


async def test_a_crash_between_commit_and_checkpoint_is_deduplicated(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [[f"u{i}@example.com", "", "n", "1"] for i in range(20)])
    stop = asyncio.Event()
    first = job(runtime, path, batch_size=10)
    await first.run(progress=lambda d, t: stop.set(), stop=stop)
    first.checkpoint_path.unlink()    # the checkpoint of the committed batch is lost
    again = await job(runtime, path, batch_size=10).run()
    assert (again.imported, again.duplicates) == (10, 10)
    assert runtime.store.counts()["events_applied"] == 20


async def test_bus_mode_appends_to_the_log_for_the_worker(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "b.csv", [["a@example.com", "M1", "ann", "1"]])
    summary = await job(runtime, path, mode="bus").run()
    assert summary.imported == 1
    assert runtime.store.resolve("email:a@example.com") is None   # not applied yet
    await runtime.worker().run_until_idle()
    assert traits(runtime, "email:a@example.com")["first_name"] == "ann"


async def test_direct_mode_logs_events_so_the_worker_skips_them(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [["a@example.com", "M1", "ann", "1"]])
    await job(runtime, path).run()
    stats = await runtime.worker().run_until_idle()
    assert stats.duplicates == 1 and runtime.store.counts()["events_applied"] == 1


async def test_invalid_imports_are_refused_up_front(runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["a@example.com", "M1", "ann", "1"]])
    with pytest.raises(ImportError_, match="unknown source 'web'"):
        job(runtime, path, source="web")
    with pytest.raises(ImportError_, match="columns the file does not have: Phone"):
        await job(runtime, path, {"identifiers": {"phone": "Phone"}}).run()
    with pytest.raises(MappingError, match="kind 'events' needs event_type"):
        parse_mapping({"kind": "events", "identifiers": {"email": "e"}})
    with pytest.raises(MappingError, match="unknown field"):
        parse_mapping({"identifiers": {"email": "e"}, "trait": {}})
