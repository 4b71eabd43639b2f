"""The columnar import path: same reader results, same documents, rejects and resume."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from tessera.events.envelope import Event
from tessera.imports.columnar import Chunk, Rows
from tessera.imports.job import ImportError_, ImportJob
from tessera.imports.readers import Position, read, read_csv_blocks
from tessera.processing.profiles import ProfileProcessor
from tessera.runtime import Runtime
from tessera.store.outbox_pack import expand
from tests.imports.test_import import job, numbered, rejects, stop_after, traits, write_csv


def columnar_job(runtime: Runtime, path: Path, **kw: Any) -> ImportJob:
    made = job(runtime, path, log_events=False, **kw)
    assert made.columnar is not None
    return made


def rows_of_blocks(path: Path, rows: int, columns: list[str],
                   start: Position | None = None) -> list[tuple[int, Any, Any]]:
    out: list[tuple[int, Any, Any]] = []
    for block in read_csv_blocks(path, start or Position(), rows, columns):
        if block.columns is not None:
            assert block.records is None
            for i in range(block.rows):
                row = block.table.slice(i, 1).to_pylist()[0]
                assert {c: block.columns[c][i] for c in columns} == {c: row[c] for c in columns}
                out.append((block.first_line + i, row, None))
        else:
            assert block.records is not None
            out += [(r.line, r.row, r.error) for r in block.records]
    return out


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 1000])
def test_blocks_read_what_the_row_reader_reads(tmp_path: Path, rows: int) -> None:
    """Plain blocks (pyarrow) and the others (the row reader) together give every record
    with the row reader's line, values and errors, whatever the block size."""
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"\xef\xbb\xbfEmail, Name ,N\r\n"
        b"a@x.io,ann,1\r\n"
        b"b@x.io, bo b ,2\r\n"
        b'c@x.io,"quoted, with comma",3\r\n'
        b'd@x.io,"two\nlines",4\r\n'
        b"\r\n"                                  # a blank line is no record
        b"e@x.io,short\r\n"                      # wrong number of fields
        b"f@x.io,\xff\xfe,6\r\n"                 # invalid UTF-8
        b"g@x.io,gus,7\r\n"
        b"h@x.io,h\xc3\xa9l\xc3\xa8ne,8\r\n"     # valid UTF-8, not ASCII
        b"i@x.io,ivy,9")                         # no newline at the end
    expected = [(r.line, r.row, r.error) for r, _ in read(path, "csv")]
    assert len(expected) == 9
    assert rows_of_blocks(path, rows, ["Email", "N"]) == expected
    after_two = [p for _, p in read(path, "csv")][1]
    assert rows_of_blocks(path, rows, ["Email", "N"], after_two) == expected[2:]


def test_plain_blocks_are_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plain.csv", numbered(10))
    blocks = list(read_csv_blocks(path, Position(), 4, ["Email", "LTV"]))
    assert [(b.first_line, b.rows, b.columns is not None) for b in blocks] == [
        (2, 4, True), (6, 4, True), (10, 2, True)]
    assert blocks[2].columns == {"Email": ["u8@x.io", "u9@x.io"], "LTV": ["8", "9"]}
    assert blocks[2].end == Position(path.stat().st_size, 11)


async def test_documents_and_payloads_are_the_row_paths_json(
        runtime: Runtime, tmp_path: Path) -> None:
    """The text-built CloudEvent and profile.updated are byte for byte what orjson makes
    of the row path's event and of the processor's derived event."""
    path = write_csv(tmp_path / "x.csv", [["a@x.io", "M1", "n", "1"]])
    made = columnar_job(runtime, path)
    assert made.columnar is not None
    rows = Rows(lines=[7, 8, 9],
                identifiers=[[("email", "a@x.io"), ("member_number", "M1")],
                             [("member_number", "M2"), ("email", 'q"uote\\@x.io')],
                             [("email", "c@x.io")]],
                traits=[{"first_name": "Zoë \"Z\" \u2028", "lifetime_value": 1.5,
                         "vip": True, "tags": ["a", {"b": None}]},
                        {"n": 10**18, "x": -0.0}, {}],
                times=[1_700_000_000.123456, 5.0, 1e-3])
    chunk = Chunk(rows, [], 1_700_000_100.5, [(7, 0), (8, 1), (9, 2)])
    prepared = made.columnar.builder.prepare(chunk)
    assert prepared.candidates == [0, 1, 2]
    columns = prepared.columns
    for k, i in enumerate(prepared.candidates):
        event = made._profile_event(rows.lines[i], rows.identifiers[i], rows.traits[i],
                                    rows.times[i], chunk.received_at)
        assert event.uid == columns.event_uids[k] == prepared.uids[i]
        assert columns.documents[k] == orjson.dumps(event.to_cloudevent()).decode()
        record = prepared.records[k]
        if not rows.traits[i]:
            assert record is None
            continue
        assert record is not None and prepared.template is not None
        message = prepared.template.fill(record.split("\x1f"))
        now = orjson.loads(message[3])["received_at"]
        diff = {n: {"old": None, "new": v} for n, v in rows.traits[i].items()}
        derived = ProfileProcessor._updated_event(event, columns.ids[k], diff, now)
        assert message == ("derived", derived.uid, derived.partition_key, derived.to_json())
    assert columns.ids == sorted(columns.ids) and len(set(columns.ids)) == 3
    packed = prepared.messages()
    assert packed is not None and expand(packed) == [
        prepared.template.fill(r.split("\x1f")) for r in prepared.records if r is not None]


@pytest.mark.parametrize("read_ahead", [False, True], ids=["in-process", "read-ahead"])
async def test_rejects_resume_and_a_lost_checkpoint_on_the_columnar_path(
        runtime: Runtime, tmp_path: Path, read_ahead: bool) -> None:
    rows = numbered(100, "example.com")
    rows[5][0], rows[5][1] = "", ""          # no identifier (line 7)
    rows[40][3] = "lots"                     # not a number (line 42)
    rows[60][0], rows[60][1] = "", ""        # after the interruption (line 62)
    path = write_csv(tmp_path / "big.csv", rows)
    stop, progress = stop_after(3)           # after the third chunk committed

    first = await columnar_job(runtime, path, batch_size=10, read_ahead=read_ahead).run(
        progress=progress, stop=stop)
    assert not first.done and first.rows == 30 and first.imported == 29
    assert runtime.store.counts()["events_applied"] == 29
    resumed = columnar_job(runtime, path, batch_size=10, read_ahead=read_ahead)
    second = await resumed.run()
    assert second.done and second.resumed_from_line == 31
    assert (second.rows, second.imported, second.rejected, second.duplicates) == (100, 97, 3, 0)
    assert resumed.columnar is not None and resumed.columnar.created == 68
    assert [(r["line"], r["reason"]) for r in rejects(Path(second.rejects_file))] == [
        (7, "no usable identifier"), (42, "lifetime_value: 'lots' is not a number"),
        (62, "no usable identifier")]
    found = rejects(Path(second.rejects_file))[1]["record"]
    assert found == {"Email": "u40@example.com", "MemberNo": "M40", "FirstName": "n",
                     "LTV": "lots"}
    assert traits(runtime, "member_number:M99") == {"first_name": "n", "lifetime_value": 99.0}
    # the checkpoint of a committed chunk lost: that chunk is found applied, not doubled
    lost = columnar_job(runtime, path, batch_size=10, restart=True, read_ahead=read_ahead)
    again = await lost.run()
    assert (again.imported, again.duplicates, again.rejected) == (0, 97, 3)
    assert runtime.store.counts()["events_applied"] == 97


async def test_missing_columns_stop_the_columnar_import_before_anything_is_applied(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["a@x.io", "M1", "n", "1"]])
    made = columnar_job(runtime, path, mapping={"identifiers": {"email": "Email"},
                                                "traits": {"city": "City"}})
    with pytest.raises(ImportError_, match="columns the file does not have: City"):
        await made.run()
    assert runtime.store.counts()["events_applied"] == 0


@pytest.mark.parametrize("columnar", [False, True], ids=["bulk", "columnar"])
@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file, no header row"),
    (b"Email,LTV, Email\na@x.io,1,b@x.io\n", "the header names a column twice")])
async def test_a_bad_header_stops_either_path_with_the_row_readers_reason(
        runtime: Runtime, tmp_path: Path, columnar: bool, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    made = job(runtime, path, log_events=False, columnar=columnar,
               mapping={"identifiers": {"email": "Email"}})
    assert (made.columnar is not None) == columnar
    with pytest.raises(ImportError_, match=reason):
        await made.run()
    assert runtime.store.counts()["events_applied"] == 0


async def test_the_columnar_path_is_used_only_where_it_gives_the_same_result(
        runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["a@x.io", "M1", "n", "1"]])
    assert job(runtime, path).columnar is not None  # logged: every event to the log first
    assert job(runtime, path, log_events=False, bulk=False).columnar is None
    assert job(runtime, path, log_events=False, mode="bus").columnar is None
    assert job(runtime, path, log_events=False,
               mapping={"identifiers": {"email": "Email"}, "id_column": "MemberNo"}
               ).columnar is None
    assert job(runtime, path, log_events=False,
               mapping={"identifiers": {"email": "Email", "previous_id": "MemberNo"}}
               ).columnar is None
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_bytes(b'{"Email": "a@x.io"}\n')
    assert job(runtime, jsonl, log_events=False,
               mapping={"identifiers": {"email": "Email"}}).columnar is None


@pytest.mark.parametrize("columnar", [False, True], ids=["bulk", "columnar"])
async def test_a_previous_id_column_joins_the_person_it_stands_for(
        runtime: Runtime, tmp_path: Path, columnar: bool) -> None:
    """A ``previous_id`` may be a known user id: the row joins that person, as through
    the processor, instead of making a new one."""
    runtime.processor.apply([Event(id="e1", source="web", type="identify", time=1.0,
                                   received_at=1.0, source_name="crm", data={},
                                   identifiers=[("user_id", "U1")])])
    path = write_csv(tmp_path / "p.csv", [["U1", "a@x.io", "ann"]], ("Prev", "Email", "Name"))
    made = job(runtime, path, log_events=False, columnar=columnar,
               mapping={"identifiers": {"previous_id": "Prev", "email": "Email"},
                        "traits": {"first_name": "Name"}})
    summary = await made.run()
    assert (summary.imported, summary.profiles_created) == (1, 0)
    known = runtime.store.resolve("user_id:U1")
    assert known is not None and runtime.store.resolve("email:a@x.io") == known
    assert traits(runtime, "user_id:U1") == {"first_name": "ann"}


async def test_only_rows_that_can_only_make_a_new_person_are_candidates(
        runtime: Runtime, tmp_path: Path) -> None:
    """One value per identifier type and no identifier shared with another row of the
    chunk or with a row the row path mapped; the others go per event."""
    path = write_csv(tmp_path / "x.csv", [["a@x.io", "M1", "n", "1"]])
    made = columnar_job(runtime, path)
    assert made.columnar is not None
    rows = Rows(lines=[2, 3, 4, 5, 6],
                identifiers=[[("email", "a@x.io")],
                             [("email", "b@x.io"), ("email", "c@x.io")],   # two emails
                             [("email", "d@x.io"), ("member_number", "M1")],
                             [("member_number", "M1")],                    # shared with 4
                             [("member_number", "M2"), ("email", "e@x.io")]],
                traits=[{}] * 5, times=[1.0] * 5)
    order = [(line, k) for k, line in enumerate(rows.lines)]
    assert made.columnar.builder.prepare(Chunk(rows, [], 2.0, order)).candidates == [0, 4]
    other = made._profile_event(7, [("email", "e@x.io")], {}, 1.0, 2.0)
    chunk = Chunk(rows, [other], 2.0, [*order, (7, -1)])
    assert made.columnar.builder.prepare(chunk).candidates == [0]


@pytest.mark.parametrize("bad", [False, True], ids=["plain", "a bad value"])
async def test_columns_mapped_at_once_are_what_the_row_loop_maps(
        runtime: Runtime, tmp_path: Path, bad: bool) -> None:
    """:meth:`ImportJob._map_columns` (whole columns) against the loop per row: the same
    rows, identifiers, traits, times, events and rejects; with a value ``convert`` refuses
    the block falls back to the loop."""
    mapping = {"identifiers": {"email": "Email", "member_number": "MemberNo"},
               "traits": {"first_name": "FirstName", "lifetime_value": "LTV",
                          "extra": "Extra"},
               "types": {"lifetime_value": "float", "extra": "json"},
               "time_column": "Updated"}
    header = ("Email", "MemberNo", "FirstName", "LTV", "Extra", "Updated")
    rows = [[f"U{i}@X.io " if i % 5 else "", f"M{i}" if i % 3 else "", ["ann", "", "bo"][i % 3],
             str(i % 4) if i % 7 else "", "[1]" if i % 2 else "",
             ["2024-01-02T03:04:05Z", "", "1700000000"][i % 3]] for i in range(40)]
    rows[15][0] = rows[15][1] = ""                  # no identifier: rejected by the row path
    rows[16][0] = "not an email"                    # unusable, the member number stays
    if bad:
        rows[20][3] = "lots"                         # not a float: rejected
    path = write_csv(tmp_path / "m.csv", rows, header)
    made = columnar_job(runtime, path, mapping=mapping)
    (block,) = read_csv_blocks(path, Position(), 100, sorted(set(header)))
    assert block.columns is not None

    def mapped(columns: bool) -> tuple[Any, ...]:
        chunk = Chunk(Rows(), [], 5.0)
        rejected: list[tuple[int, str, Any]] = []
        if columns:
            done = made._map_columns(block, chunk, 1.0, rejected)
            assert done is not bad
            if not done:
                made._map_block(block, chunk, 1.0, rejected)
        else:
            made._map_columns = lambda *a: False  # type: ignore[method-assign]
            made._map_block(block, chunk, 1.0, rejected)
            del made._map_columns
        r = chunk.rows
        return (r.lines, r.identifiers, r.traits, r.times, chunk.order,
                [e.to_json() for e in chunk.events], rejected)

    assert mapped(True) == mapped(False)
    lines, idents, traits_, times, _, events, rejected = mapped(True)
    assert [r[0] for r in rejected] == [2, 17, *([22] if bad else []), 32]
    assert 18 in lines and idents[lines.index(18)] == [("member_number", "M16")]
    assert traits_[lines.index(3)] == {"lifetime_value": 1.0, "extra": [1]}
    assert traits_[lines.index(4)] == {"first_name": "bo", "lifetime_value": 2.0}
    assert len(set(times)) == 3 and events == []


@pytest.mark.parametrize("columnar", [False, True], ids=["bulk", "columnar"])
async def test_every_write_of_an_import_is_made_on_one_thread(
        runtime: Runtime, tmp_path: Path, columnar: bool) -> None:
    """The SQLite store's connection is per thread, and its page cache is dropped whenever
    another connection wrote: all of an import's chunks go through one writing thread."""
    path = write_csv(tmp_path / "t.csv", numbered(50))
    made = job(runtime, path, log_events=False, columnar=columnar, batch_size=5)
    threads: list[str] = []
    if made.columnar is not None:
        commit = made.columnar.commit

        def spy_commit(prepared: Any, retries: int = 8) -> Any:
            threads.append(threading.current_thread().name)
            return commit(prepared, retries)

        made.columnar.commit = spy_commit  # type: ignore[method-assign]
    else:
        assert made.bulk is not None
        apply = made.bulk.apply

        def spy_apply(events: Any, retries: int = 8) -> Any:
            threads.append(threading.current_thread().name)
            return apply(events, retries)

        made.bulk.apply = spy_apply  # type: ignore[method-assign]
    summary = await made.run()
    assert summary.imported == 50 and len(threads) >= 10
    assert len(set(threads)) == 1 and threads[0].startswith("import-writer")


async def test_a_uniform_chunk_is_built_column_wise_exactly_as_row_by_row(
        runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row with the same identifier types and trait names: the column-wise build
    gives the loop's links, traits, documents and messages, value for value."""
    path = write_csv(tmp_path / "x.csv", [["a@x.io", "M1", "n", "1"]])
    made = columnar_job(runtime, path)
    assert made.columnar is not None
    builder = made.columnar.builder
    values = ["Zoë \"Z\" \u2028", "{brace}", "plain", "a\\b"]
    rows = Rows(lines=[7, 8, 9, 10],
                identifiers=[[("member_number", f"M{k}"), ("email", f"u{k}@x.io")]
                             for k in range(4)],
                traits=[{"first_name": values[k], "lifetime_value": [1.5, -0.0, 10**18, 2][k],
                         "vip": k % 2 == 0, "{odd name}": {"k": [k]}} for k in range(4)],
                times=[1_700_000_000.123456, 5.0, 1e-3, 5.0])
    chunk = Chunk(rows, [], 1_700_000_100.5, [(7, 0), (8, 1), (9, 2), (10, 3)])
    ids = [f"prf_{k:032x}" for k in range(4)]
    monkeypatch.setattr("tessera.imports.columnar.new_profile_ids", lambda n: ids[:n])
    column_wise = builder.prepare(chunk)
    monkeypatch.setattr(type(builder), "_build_uniform", lambda *args: False)
    row_wise = builder.prepare(chunk)
    assert column_wise.columns == row_wise.columns
    assert column_wise.records == row_wise.records and None not in row_wise.records
    resolver_order = [t for t, _ in runtime.processor.resolver.sort(rows.identifiers[0])]
    assert column_wise.columns.link_types[:2] == resolver_order


@pytest.mark.parametrize("read_ahead", [False, True], ids=["in-process", "read-ahead"])
async def test_a_logged_columnar_import_appends_the_row_paths_events_to_the_log(
        tmp_path: Path, read_ahead: bool) -> None:
    """With the log, the columnar path appends exactly the events the bulk path appends:
    the same ids, keys and bytes (but for the time they were read), in file order, for
    new people, rows the chunk or the store contradicts, and row-path rows alike."""
    import sqlite3

    from tests.imports.conftest import CONFIG
    from tests.imports.test_bulk import BEFORE, HEADER, MAPPING, ROWS

    file = write_csv(tmp_path / "people.csv",
                     [[*row, str(1_700_000_000 + n)] for n, row in enumerate(ROWS)], HEADER)

    async def logged(name: str, columnar: bool) -> list[tuple[str, str, dict[str, Any]]]:
        rt = Runtime(CONFIG, tmp_path / name)
        await rt.start()
        try:
            rt.processor.apply(BEFORE)
            made = job(rt, file, MAPPING, batch_size=4, columnar=columnar,
                       read_ahead=read_ahead if columnar else None)
            assert (made.columnar is not None) == columnar and made.log_events
            summary = await made.run()
            assert (summary.imported, summary.rejected) == (14, 2)
        finally:
            await rt.close()
        conn = sqlite3.connect(tmp_path / name / "bus.db")
        out = []
        for msg_id, key, payload in conn.execute(
                "SELECT msg_id, key, payload FROM log WHERE topic = 'events' ORDER BY seq"):
            event = orjson.loads(payload)
            assert payload == orjson.dumps(Event.from_json(payload))  # the envelope's bytes
            out.append((msg_id, key, {k: v for k, v in event.items() if k != "received_at"}))
        conn.close()
        return out

    columnar_log = await logged("columnar", True)
    bulk_log = await logged("bulk", False)
    assert len(columnar_log) == 14
    assert columnar_log == bulk_log
