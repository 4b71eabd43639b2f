"""Import rows' event uids: rising with the line, stable, and kept from an earlier version."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest

from tessera.events.envelope import event_uid
from tessera.identity.resolver import new_profile_id, new_profile_ids
from tessera.imports.job import IMPORT_SOURCE, ImportJob, import_uid, import_uid_prefix
from tessera.runtime import Runtime
from tests.imports.test_import import job, numbered, write_csv


def uid_of_line(runtime: Runtime, email: str) -> str:
    pid = runtime.store.resolve(f"email:{email}")
    assert pid is not None
    (entry,) = runtime.store.timeline(pid, 10)
    return entry.event_uid


@pytest.mark.parametrize("columnar", [False, True], ids=["bulk", "columnar"])
async def test_row_uids_rise_with_the_line(runtime: Runtime, tmp_path: Path,
                                           columnar: bool) -> None:
    path = write_csv(tmp_path / "u.csv", numbered(300))
    made = job(runtime, path, log_events=False, columnar=columnar, batch_size=64)
    assert (made.columnar is not None) == columnar
    summary = await made.run()
    assert summary.imported == 300 and summary.uids == "ordered"
    prefix = import_uid_prefix("crm", made.import_id)
    uids = [uid_of_line(runtime, f"u{i}@x.io") for i in range(300)]
    assert uids == [import_uid(prefix, line) for line in range(2, 302)]
    assert uids == sorted(uids) and all(len(u) == 32 for u in uids)
    int(uids[0], 16)
    # a pure function of (source, import, line): another source, another prefix
    assert import_uid_prefix("membership", made.import_id) != prefix


def as_earlier_version(made: ImportJob) -> ImportJob:
    """A job that makes its uids as versions before ordered uids did (event_uid hashes)."""
    made._uid_scheme = lambda: "hashed"  # type: ignore[method-assign]
    return made


async def test_a_restarted_import_of_an_earlier_version_finds_its_rows(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "old.csv", numbered(25))
    first = await as_earlier_version(job(runtime, path, log_events=False)).run()
    assert first.imported == 25 and first.uids == "hashed"
    assert uid_of_line(runtime, "u0@x.io") == event_uid("crm", IMPORT_SOURCE,
                                                         f"{first.import_id}:2")
    again = await job(runtime, path, log_events=False, restart=True).run()
    assert again.uids == "hashed"
    assert (again.imported, again.duplicates) == (0, 25)
    assert runtime.store.counts()["events_applied"] == 25


@pytest.mark.parametrize("columnar", [False, True], ids=["bulk", "columnar"])
async def test_a_checkpoint_of_an_earlier_version_resumes_with_its_uids(
        runtime: Runtime, tmp_path: Path, columnar: bool) -> None:
    """Interrupted by a crash after its second batch committed but before that batch's
    checkpoint was written; resumed by this version from the first batch's checkpoint."""
    path = write_csv(tmp_path / "old.csv", numbered(40))
    stop = asyncio.Event()
    old = as_earlier_version(job(runtime, path, log_events=False, columnar=columnar,
                                 batch_size=10))
    saved: list[bytes] = []

    def progress(done: int, total: int) -> None:
        saved.append(old.checkpoint_path.read_bytes())
        if len(saved) == 2:
            stop.set()

    await old.run(progress=progress, stop=stop)
    assert runtime.store.counts()["events_applied"] == 20
    checkpoint = orjson.loads(saved[0])
    del checkpoint["uids"]  # earlier versions wrote none
    old.checkpoint_path.write_bytes(orjson.dumps(checkpoint))
    resumed = await job(runtime, path, log_events=False, columnar=columnar,
                        batch_size=10).run()
    assert resumed.done and resumed.uids == "hashed"
    assert (resumed.imported, resumed.duplicates) == (30, 10)
    assert runtime.store.counts()["events_applied"] == 40


def test_profile_ids_made_later_sort_later() -> None:
    first = new_profile_id()
    time.sleep(0.002)
    ids = [new_profile_id() for _ in range(1000)]
    assert all(re.fullmatch(r"prf_[0-9a-f]{32}", p) for p in [first, *ids])
    assert len(set(ids)) == 1000
    assert all(first < p for p in ids)
    assert int(first[4:16], 16) <= time.time_ns() // 1_000_000


def test_profile_ids_made_at_once_rise_and_keep_the_layout() -> None:
    first = new_profile_id()
    time.sleep(0.002)
    ids = new_profile_ids(1000)
    assert all(re.fullmatch(r"prf_[0-9a-f]{32}", p) for p in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert first < ids[0] and ids[0][:16] == ids[-1][:16]
    assert new_profile_ids(0) == []
