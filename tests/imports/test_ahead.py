"""The import's reading process: chunks built and packed beside the writer.

The store must end up as an import without a reading process leaves it: new people
written as the process packed them, every other chunk read again by the writer (a
known person, an erased one), and a reading process that dies costs no row and
applies none twice.
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest

from tessera.events.envelope import Event
from tessera.imports.columnar import Chunk, Rows
from tessera.imports.job import ImportError_, ImportJob
from tessera.imports.readers import Position, read_csv_blocks
from tessera.privacy.erasure import erase_person
from tessera.runtime import Runtime
from tests.imports.conftest import CONFIG
from tests.imports.test_bulk import HEADER, MAPPING, canonical
from tests.imports.test_import import job, numbered, stop_after, traits, write_csv


def people(n: int) -> list[list[str]]:
    """:func:`numbered` rows with a time of their own (the ``Updated`` column)."""
    return [[*row, str(1_700_000_000 + i)] for i, row in enumerate(numbered(n))]

KNOWN = Event(id="k1", source="membership", type="member.updated", time=1_600_000_000.0,
              received_at=1.0, source_name="membership",
              data={"traits": {"first_name": "Kay"}},
              identifiers=[("member_number", "M57")])


async def import_into(tmp_path: Path, name: str, file: Path, read_ahead: bool,
                      before: list[Event] | None = None, erase: str | None = None,
                      ) -> tuple[dict[str, Any], tuple[int, ...], int]:
    """Import ``file`` in 20-row chunks into a fresh data directory: its canonical
    content, the summary's counts and the chunks written packed."""
    rt = Runtime(CONFIG, tmp_path / name)
    await rt.start()
    try:
        if before:
            rt.processor.apply(before)
        if erase is not None:
            await erase_person(rt, ("email", erase), "test")
        made = job(rt, file, MAPPING, batch_size=20, log_events=False, read_ahead=read_ahead)
        assert made.columnar is not None
        summary = await made.run()
        counts = (summary.rows, summary.imported, summary.duplicates, summary.rejected,
                  summary.profiles_created)
        return canonical(rt), counts, made.columnar.packed
    finally:
        await rt.close()


async def test_new_people_are_written_as_packed_and_equal_an_import_without_the_process(
        tmp_path: Path) -> None:
    file = write_csv(tmp_path / "people.csv", people(100), HEADER)
    ahead, counts, packed = await import_into(tmp_path, "ahead", file, True)
    here, counts_here, packed_here = await import_into(tmp_path, "here", file, False)
    assert packed == 5 and packed_here == 0  # every chunk packed by the reading process
    assert counts == counts_here == (100, 100, 0, 0, 100)
    assert ahead == here


async def test_a_chunk_the_store_contradicts_is_read_again_by_the_writer(
        tmp_path: Path) -> None:
    """Line 59 (member M57) names a known person: its chunk (lines 42 to 61) is not
    written as packed; the writer reads it again and M57 joins the known person."""
    file = write_csv(tmp_path / "people.csv", people(100), HEADER)
    ahead, counts, packed = await import_into(tmp_path, "ahead", file, True, [KNOWN])
    here, counts_here, _ = await import_into(tmp_path, "here", file, False, [KNOWN])
    assert packed == 4
    assert counts == counts_here == (100, 100, 0, 0, 99)
    assert ahead == here
    joined = ahead["profiles"][frozenset({("member_number", "M57"), ("email", "u57@x.io")})]
    assert joined["traits"]["first_name"][:2] == ("Kay", "membership")


async def test_an_erased_person_is_screened_as_without_the_process(tmp_path: Path) -> None:
    file = write_csv(tmp_path / "people.csv", people(60), HEADER)
    before = [Event(id="e1", source="crm", type="contact", time=1.0, received_at=1.0,
                    source_name="crm", data={}, identifiers=[("email", "u7@x.io")])]
    ahead, counts, packed = await import_into(tmp_path, "ahead", file, True, before, "u7@x.io")
    here, counts_here, _ = await import_into(tmp_path, "here", file, False, before, "u7@x.io")
    assert packed == 0  # the screen is not empty: every chunk goes through it row by row
    assert counts == counts_here
    assert ahead == here
    assert not any(("email", "u7@x.io") in key for key in ahead["profiles"])


async def test_a_killed_reading_process_loses_no_row_and_applies_none_twice(
        runtime: Runtime, tmp_path: Path) -> None:
    """The reading process is killed after the first chunk was committed: the import
    fails naming it; run again, it resumes after the last committed chunk and every row
    is applied exactly once."""
    file = write_csv(tmp_path / "people.csv", numbered(300))
    first = job(runtime, file, batch_size=20, log_events=False, read_ahead=True)
    pids: list[int] = []

    def kill_reader(done: int, total: int) -> None:
        if not pids:
            found = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_reader(p)]
            assert len(found) == 1
            pids.append(found[0])
            os.kill(found[0], signal.SIGKILL)

    with pytest.raises(ImportError_, match="reading process ended"):
        await first.run(progress=kill_reader)
    assert pids
    applied = runtime.store.counts()["events_applied"]
    assert 20 <= applied < 300
    second = await job(runtime, file, batch_size=20, log_events=False, read_ahead=True).run()
    assert second.done and second.resumed_from_line > 2
    counts = runtime.store.counts()
    assert counts["events_applied"] == 300 and counts["profiles"] == 300
    assert traits(runtime, "member_number:M299") == {"first_name": "n", "lifetime_value": 299.0}


def _is_reader(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"tessera.imports.ahead" in fh.read()
    except OSError:
        return False


async def test_the_job_pickles_without_its_store_and_maps_the_same(
        runtime: Runtime, tmp_path: Path) -> None:
    """What the reading process gets: no store, processor or bus, and the same chunks."""
    file = write_csv(tmp_path / "people.csv", numbered(10))
    made = job(runtime, file, log_events=False)
    copy = pickle.loads(pickle.dumps(made))
    assert not any(hasattr(copy, name) for name in ("store", "processor", "bus"))
    assert copy.columnar is None and copy.builder is not None

    def chunk_of(j: ImportJob) -> Chunk:
        blocks = read_csv_blocks(file, Position(), 100, sorted(j.mapping.columns()))
        return j._next_chunk(blocks, 1.0)[0].chunk

    mine, theirs = chunk_of(made), chunk_of(copy)
    assert isinstance(theirs.rows, Rows)
    assert (theirs.rows.lines, theirs.rows.identifiers, theirs.rows.traits) == (
        mine.rows.lines, mine.rows.identifiers, mine.rows.traits)


async def test_a_small_file_is_read_in_process_unless_asked(
        runtime: Runtime, tmp_path: Path) -> None:
    file = write_csv(tmp_path / "people.csv", numbered(30))
    small = job(runtime, file, batch_size=10, log_events=False)
    await small.run()
    assert small.columnar is not None and small.columnar.packed == 0
    others = [[f"v{i}@y.io", f"N{i}", "n", str(i)] for i in range(30)]
    asked = job(runtime, write_csv(tmp_path / "more.csv", others),
                batch_size=10, log_events=False, read_ahead=True)
    await asked.run()
    assert asked.columnar is not None and asked.columnar.packed == 3
    assert runtime.store.counts()["profiles"] == 60


async def test_a_stopped_import_ends_its_reading_process_and_resumes(
        runtime: Runtime, tmp_path: Path) -> None:
    """Stopped as Ctrl-C stops it (after the second chunk): no reading process is left,
    and the next run resumes after the committed chunks and applies each row once."""
    file = write_csv(tmp_path / "people.csv", numbered(200))
    stop, progress = stop_after(2)
    first = await job(runtime, file, batch_size=20, log_events=False,
                      read_ahead=True).run(progress=progress, stop=stop)
    assert not first.done and first.imported == 40
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_reader(p)]
    second = await job(runtime, file, batch_size=20, log_events=False, read_ahead=True).run()
    assert second.done and second.resumed_from_line == 41 and second.imported == 200
    assert runtime.store.counts()["events_applied"] == 200


def test_the_cli_imports_with_a_reading_process_when_asked(tmp_path: Path) -> None:
    """``tessera import --read-ahead`` on the default configuration: every row applied,
    the summary printed, no reading process left."""
    import yaml
    from typer.testing import CliRunner

    from tessera.cli import app as cli_app

    file = write_csv(tmp_path / "people.csv", numbered(120))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({"identifiers": {"email": "Email",
                                                       "user_id": "MemberNo"},
                                       "traits": {"first_name": "FirstName"}}))
    result = CliRunner().invoke(cli_app, [
        "import", str(file), "--source", "crm", "--mapping", str(mapping), "--no-log",
        "--read-ahead", "--batch-size", "50", "--no-progress",
        "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "120" in result.output
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_reader(p)]
    store = Runtime(CONFIG, tmp_path / "data").store
    try:
        assert store.counts()["profiles"] == 120
    finally:
        store.close()


async def test_an_encrypted_store_gets_every_chunk_sealed_not_packed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypting wrapper has no packer: the reading process sends prepared chunks,
    the wrapper seals every personal trait and message, and nothing is written packed."""
    import base64

    from tessera.config import EncryptionConfig, PrivacyConfig

    monkeypatch.setenv("TESSERA_PII_KEYS", "k1:" + base64.b64encode(b"1" * 32).decode())
    config = CONFIG.model_copy(update={"privacy": PrivacyConfig(
        encryption=EncryptionConfig(enabled=True, traits=["first_name"]))})
    rows = [[f"s{i}@x.io", f"S{i}", f"secretname{i:04d}", str(i)] for i in range(60)]
    file = write_csv(tmp_path / "people.csv", rows)
    rt = Runtime(config, tmp_path / "data")
    await rt.start()
    try:
        assert rt.store.column_packer() is None
        made = job(rt, file, batch_size=20, log_events=False, read_ahead=True)
        summary = await made.run()
        assert made.columnar is not None and made.columnar.packed == 0
        assert summary.imported == 60 and rt.store.counts()["profiles"] == 60
        assert traits(rt, "member_number:S7")["first_name"] == "secretname0007"
    finally:
        await rt.close()
    files = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("store.db*"))
    assert b"secretname" not in files


async def test_an_import_run_again_finds_every_packed_chunk_applied(
        runtime: Runtime, tmp_path: Path) -> None:
    """Restarted without its checkpoint, every chunk's events are applied already: the
    writer's probe refuses each packed write and the rows count as duplicates."""
    file = write_csv(tmp_path / "people.csv", numbered(80))
    first = job(runtime, file, batch_size=20, log_events=False, read_ahead=True)
    await first.run()
    assert first.columnar is not None and first.columnar.packed == 4
    again = job(runtime, file, batch_size=20, log_events=False, read_ahead=True,
                restart=True)
    summary = await again.run()
    assert again.columnar is not None and again.columnar.packed == 0
    assert (summary.imported, summary.duplicates) == (0, 80)
    assert runtime.store.counts()["events_applied"] == 80


async def test_an_import_reads_in_process_when_no_reading_process_can_start(
        runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tessera.imports.ahead.sys.executable", str(tmp_path / "no-python"))
    file = write_csv(tmp_path / "people.csv", numbered(50))
    made = job(runtime, file, batch_size=20, log_events=False, read_ahead=True)
    summary = await made.run()
    assert made.columnar is not None and made.columnar.packed == 0
    assert summary.done and summary.imported == 50
    assert runtime.store.counts()["profiles"] == 50
