"""The bulk import path gives the store exactly what the per-event path gives it.

The same file is imported twice, once with the bulk path and once row by row
through the processor, into two data directories that already hold the same
people; then profiles (keyed by their identifiers, since profile ids are
random), identity links, traits with their sources, timelines, merges, the
applied records and the derived events are compared. Run on the embedded
store and on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from tessera.events.envelope import Event
from tessera.imports.job import ImportJob
from tessera.imports.mapping import parse_mapping
from tessera.runtime import Runtime
from tests.imports.conftest import CONFIG
from tests.imports.test_import import PROFILE_MAPPING, write_csv
from tests.services import require_postgres

MAPPING = {**PROFILE_MAPPING, "time_column": "Updated"}
HEADER = ("Email", "MemberNo", "FirstName", "LTV", "Updated")

ROWS: list[list[Any]] = [
    # chunk 1 (batch size 4)
    ["new1@x.io", "M1", "ann", "1"],     # nobody knows it: bulk
    ["sh@x.io", "M3", "cy", "2"],        # shares its email with the 4th row: per event
    ["old@x.io", "", "olly", "3"],       # a known person of a higher-priority source
    ["sh@x.io", "M4", "dee", "4"],       # same email, another member number (limit 1)
    # chunk 2
    ["fam@x.io", "M5", "eve", "5"],      # the family email of member M200: not merged
    ["new1@x.io", "", "ann2", "6"],      # the person the bulk path made in chunk 1
    ["", "M7", "gus", "7"],              # bulk
    ["", "", "nobody", "8"],             # rejected: no identifier
    # chunk 3
    ["a@x.io", "M9", "hal", "9"],        # the same person twice in one chunk: per event
    ["a@x.io", "M9", "hal", "10"],
    ["z@x.io", "M11", "ivy", "lots"],    # rejected: not a number
    ["new2@x.io", "M2", "bob", "12"],    # bulk
    # chunk 4
    ["q@x.io", "M13", "jo", "13"],       # bulk
    ["W@X.io", "M14", "kim", "14"],      # bulk (normalized e-mail)
    ["x@x.io", "M2", "bo", "15"],        # M2 belongs to the 12th row's person: joins it
    ["M2@x.io", "M16", "lu", "16"],      # bulk
]
BEFORE = [
    Event(id="m1", source="membership", type="member.updated", time=1_600_000_000.0,
          received_at=1.0, source_name="membership", data={"traits": {"first_name": "Olga"}},
          identifiers=[("member_number", "M100"), ("email", "old@x.io")]),
    Event(id="c1", source="crm", type="contact", time=1_600_000_000.0, received_at=1.0,
          source_name="crm", data={"traits": {"first_name": "Fam"}},
          identifiers=[("member_number", "M200"), ("email", "fam@x.io")]),
]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    url = require_postgres()
    schemas = [f"t_bulk_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield "|".join(f"{url}?schema={s}" for s in schemas)
    with psycopg.connect(url, autocommit=True) as conn:
        for name in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def canonical(rt: Runtime) -> dict[str, Any]:
    """The store's content with profile ids replaced by their identifiers."""
    store = rt.store
    out: dict[frozenset[tuple[str, str]], Any] = {}
    key_of: dict[str, frozenset[tuple[str, str]]] = {}
    for pid in store.iter_profile_ids():
        p = store.get_profile(pid)
        assert p is not None
        key_of[pid] = frozenset((i.type, i.value) for i in p.identities)
    for pid, key in key_of.items():
        p = store.get_profile(pid)
        assert p is not None
        timeline = [(e.event_uid, e.type, e.source, e.time,
                     {k: v for k, v in e.event.items() if k != "tesserareceivedat"})
                    for e in store.timeline(pid, 1000)]
        out[key] = {
            "event_count": p.event_count,
            "links": sorted((i.type, i.value, i.event_uid, i.source, i.reason)
                            for i in p.identities),
            "traits": {n: (t.value, t.source, t.time, t.priority, t.event_uid)
                       for n, t in p.traits.items()},
            "merges": sorted((m.event_uid, m.reason) for m in p.merged_from),
            "timeline": timeline,
        }
    outbox = []
    for m in store.pending_outbox(10_000):
        data = orjson.loads(m.payload)["data"]
        pid = data["profile_id"]
        outbox.append((m.topic, m.message_id, key_of.get(pid, pid),
                       orjson.dumps(data.get("changed"), option=orjson.OPT_SORT_KEYS)))
    return {"profiles": out, "counts": store.counts(), "outbox": sorted(outbox, key=str)}


async def imported(tmp_path: Path, name: str, url: str | None, file: Path, bulk: bool,
                   columnar: bool = False, read_ahead: bool = False
                   ) -> tuple[dict[str, Any], list[Any], int]:
    rt = Runtime(CONFIG, tmp_path / name, store_url=url)
    await rt.start()
    try:
        rt.processor.apply(BEFORE)

        def new_job(restart: bool) -> ImportJob:
            return ImportJob(path=file, source="crm", mapping=parse_mapping(MAPPING),
                             store=rt.store, processor=rt.processor, extractor=rt.extractor,
                             bus=rt.bus, work_dir=rt.data_dir / "imports", batch_size=4,
                             log_events=False, bulk=bulk, columnar=columnar, restart=restart,
                             read_ahead=read_ahead)

        job = new_job(restart=False)
        assert (job.columnar is not None) == columnar
        first = await job.run()
        again = await new_job(restart=True).run()
        made = (job.columnar.created if job.columnar is not None
                else job.bulk.created if job.bulk is not None else 0)
        summaries = [(s.rows, s.imported, s.duplicates, s.rejected, s.profiles_created, s.merges)
                     for s in (first, again)]
        return canonical(rt), summaries, made
    finally:
        await rt.close()


@pytest.mark.parametrize(("columnar", "read_ahead"), [(False, False), (True, False), (True, True)],
                         ids=["bulk", "columnar", "columnar-read-ahead"])
async def test_bulk_and_per_event_imports_give_the_same_store(
        tmp_path: Path, store_url: str | None, columnar: bool, read_ahead: bool) -> None:
    """The bulk path (events) and the columnar path (columns from the file to the store),
    with its chunks built in the import's reading process or in its own, against the
    per-event path. With a reading process every chunk here has a row the store or the
    chunk contradicts: the packed write is refused and the writer reads the chunk again."""
    file = write_csv(tmp_path / "people.csv",
                     [[*row, str(1_700_000_000 + n)] for n, row in enumerate(ROWS)], HEADER)
    urls = store_url.split("|") if store_url else [None, None]
    bulk, bulk_summaries, made = await imported(tmp_path, "bulk", urls[0], file, True, columnar,
                                                read_ahead)
    single, single_summaries, _ = await imported(tmp_path, "single", urls[1], file, False)
    assert made == 6                     # rows 1, 7, 12, 13, 14 and 16 took the bulk path
    assert bulk_summaries == single_summaries
    assert bulk_summaries[0] == (16, 14, 0, 2, 10, 0)
    assert bulk_summaries[1][2] == 14    # the second run: every row already applied
    assert bulk["counts"] == single["counts"]
    assert bulk["profiles"].keys() == single["profiles"].keys()
    for key, profile in bulk["profiles"].items():
        assert profile == single["profiles"][key], sorted(key)
    assert bulk["outbox"] == single["outbox"]
    # the higher-priority source keeps its value; the import's own survives where it wins
    olga = bulk["profiles"][frozenset({("member_number", "M100"), ("email", "old@x.io")})]
    assert olga["traits"]["first_name"][:2] == ("Olga", "membership")
    assert olga["traits"]["lifetime_value"][:2] == (3.0, "crm")
