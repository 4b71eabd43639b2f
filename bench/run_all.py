"""Run every benchmark, one after the other, and print a summary table.

Each benchmark runs as its own process (``python bench/<name>.py``) with
modest sizes, or with its own defaults (the sizes in docs/benchmarks.md)
with ``--full``. All traffic goes to servers this run starts on 127.0.0.1,
with temporary data directories that are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

MODEST: dict[str, list[str]] = {
    "ingest_http": ["--duration", "5", "--warmup", "1"],
    "processor": ["--events", "20000", "--people", "2000"],
    "lookup_latency": ["--people", "5000", "--events", "20000", "--duration", "10"],
    "freshness": ["--duration", "10", "--warmup", "2"],
}


def rows(name: str, r: dict[str, Any]) -> list[tuple[str, float, str, float, bool]]:
    """(figure, value, unit, target, higher is better)."""
    if name == "ingest_http":
        return [
            (f"{x['kind']} events/s", x["events_per_s"], "events/s", 20_000, True)
            for x in r["results"]
        ] + [(f"{x['kind']} p99", x["p99_ms"], "ms", math.nan, False) for x in r["results"]]
    if name == "processor":
        return [("events/s", r["events_per_s"], "events/s", 8_000, True)]
    if name == "lookup_latency":
        lat = r["latency_ms"]
        return [
            ("p50", lat["p50"], "ms", math.nan, False),
            ("p99", lat["p99"], "ms", 5.0, False),
            ("max", lat["max"], "ms", math.nan, False),
        ]
    if name == "freshness":
        lat = r["freshness_ms"]
        return [
            ("p50", lat["p50"], "ms", math.nan, False),
            ("p99", lat["p99"], "ms", 250.0, False),
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run all Tessera benchmarks and print a summary table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--only", default=",".join(MODEST), help="comma-separated benchmarks to run"
    )
    parser.add_argument(
        "--full", action="store_true", help="use each benchmark's own (larger) defaults"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in MODEST:
            parser.error(f"unknown benchmark {n!r}; known: {', '.join(MODEST)}")

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    table: list[tuple[str, str, float, str, float, bool]] = []
    failures = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
            if not args.full:
                cmd += MODEST[name]
            print(f"\n$ {' '.join(['python', f'bench/{name}.py', *cmd[2:]])}", flush=True)
            code = subprocess.run(cmd, check=False).returncode
            if not out.exists():
                failures.append(f"{name} (exit {code}, no result)")
                continue
            if code != 0:
                failures.append(f"{name} (exit {code}: a verification failed)")
            result = json.loads(out.read_text())
            table += [(name, *row) for row in rows(name, result)]

    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{'benchmark':<16} {'figure':<22} {'measured':>14} {'target':>12}  verdict")
    for name, figure, value, unit, target, higher in table:
        if math.isnan(target):
            goal, verdict = "", ""
        else:
            goal = f"{'>=' if higher else '<='} {target:,.0f}"
            met = value >= target if higher else value <= target
            verdict = "met" if met else "MISSED"
        shown = f"{value:,.0f} {unit}" if value >= 100 else f"{value:.2f} {unit}"
        print(f"{name:<16} {figure:<22} {shown:>14} {goal:>12}  {verdict}")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
