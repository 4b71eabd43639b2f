"""Processor throughput: identity resolution, traits and timeline on the embedded default.

The embedded bus of a fresh data directory is filled with N events through the
real HTTP API (``tessera serve --no-worker``, batches of 100) from about
``N / 10`` synthetic people with overlapping identifiers: e-mails (some in
upper case), user ids, anonymous ids of one to three devices per person,
member numbers and phones. Web visits stay anonymous until a login
(``identify``) ties the device to the account, and CRM and membership records
often arrive before the person ever logged in, so many profiles are created
apart and merged later. The server is stopped before the measurement.

Then the processor runs over the whole backlog, either in this process
(``Runtime(...).worker()``, stepping until the bus is empty; the default) or
as the real ``tessera worker`` process, timed until the profiles group's lag
is 0. Events/s is events applied divided by the time from the first fetch to
the last batch acknowledged (``--mode process`` reports both with and without
the process start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    CpuMeter,
    Spy,
    Tessera,
    add_profile_options,
    bus_counts,
    event_stream,
    free_port,
    machine_line,
    population,
    send_stream,
    verdict,
    write_json,
)

TARGET_EVENTS_PER_S = 8_000


def prefill(data: Path, events: int, people: int, seed: int) -> dict[str, Any]:
    stream = event_stream(population(people, seed), events, seed + 1)
    started = time.perf_counter()
    with Tessera(["serve", "--no-worker"], data, port=free_port()).start() as server:
        accepted = send_stream(server.url, stream)
    total, lag = bus_counts(data)
    return {
        "accepted": accepted,
        "in_bus": total,
        "lag": lag,
        "seconds": time.perf_counter() - started,
    }


async def run_in_process(data: Path, profile: str | None, mode: str) -> dict[str, Any]:
    from tessera.config import load_config
    from tessera.runtime import Runtime

    runtime = Runtime(load_config(None), data)
    await runtime.start()
    worker = runtime.worker()
    spy = Spy({"worker-inprocess": os.getpid()}, Path(profile), mode) if profile else None
    cpu0 = os.times()
    started = last = time.perf_counter()
    try:
        while await worker.step(0.05):
            last = time.perf_counter()
        cpu1 = os.times()
    finally:
        if spy is not None:
            spy.stop()
            print(spy.report())
        await runtime.close()
    return {
        "applied": worker.stats.applied,
        "duplicates": worker.stats.duplicates,
        "dead_lettered": worker.stats.dead_lettered,
        "batches": worker.stats.batches,
        "seconds": last - started,
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
    }


def run_process(
    data: Path, events: int, timeout: float, profile: str | None, mode: str
) -> dict[str, Any]:
    started = time.perf_counter()
    first_progress: tuple[float, int] | None = None
    worker = Tessera(["worker", "--log-level", "warning"], data).start()
    spy = Spy({"worker": worker.pids()[0]}, Path(profile), mode) if profile else None
    meter = CpuMeter({"worker": worker.pids()[0]}).start()
    try:
        while True:
            _, lag = bus_counts(data)
            now = time.perf_counter()
            if first_progress is None and lag < events:
                first_progress = (now, events - lag)
            if lag == 0:
                break
            if now - started > timeout:
                raise TimeoutError(f"lag still {lag} after {timeout} s")
            time.sleep(0.02)
        finished = time.perf_counter()
        cpu = meter.stop()["worker"]
    finally:
        if spy is not None:
            spy.stop()
            print(spy.report())
        worker.stop()
    assert first_progress is not None
    t_first, done_first = first_progress
    return {
        "applied": events,
        "seconds": finished - started,
        "seconds_after_first_batch": finished - t_first,
        "events_after_first_batch": events - done_first,
        "cpu_s": cpu,
    }


def store_counts(data: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{data / 'store.db'}?mode=ro", uri=True)
    try:

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        return {
            "profiles": one("SELECT count(*) FROM profiles WHERE merged_into IS NULL"),
            "identities": one("SELECT count(*) FROM identities"),
            "merges": one("SELECT count(*) FROM merges"),
            "events_applied": one("SELECT count(*) FROM applied"),
        }
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Processor throughput over a pre-filled embedded bus.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=50_000, help="events in the backlog")
    parser.add_argument("--people", type=int, default=5_000, help="synthetic people")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mode",
        choices=["inprocess", "process"],
        default="inprocess",
        help="run the worker in this process, or as the real `tessera worker` process",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    add_profile_options(parser)
    parser.add_argument("--data-dir", help="data directory to use (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data directory")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    data = base / "processor"
    if data.exists():
        shutil.rmtree(data)
    print(f"processor: {machine_line()}")
    try:
        fill = prefill(data, args.events, args.people, args.seed)
        print(
            f"  backlog: {fill['in_bus']:,} events from {args.people:,} people in the bus"
            f" (filled over HTTP in {fill['seconds']:.1f} s)"
        )
        if args.mode == "inprocess":
            run = asyncio.run(run_in_process(data, args.profile, args.profile_mode))
        else:
            run = run_process(data, fill["in_bus"], args.timeout, args.profile, args.profile_mode)
        counts = store_counts(data)
        _, lag = bus_counts(data)
    finally:
        if not args.keep and not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    rate = run["applied"] / run["seconds"]
    result: dict[str, Any] = {
        "benchmark": "processor",
        "machine": machine_line(),
        "mode": args.mode,
        "events": fill["in_bus"],
        "people": args.people,
        **run,
        "events_per_s": rate,
        "store": counts,
        "lag_after": lag,
        "verified": counts["events_applied"] == fill["in_bus"] and lag == 0,
    }
    print(
        f"  {args.mode}: {run['applied']:,} events in {run['seconds']:.2f} s ="
        f" {rate:,.0f} events/s  target >= {TARGET_EVENTS_PER_S:,}: "
        f"{verdict(rate, TARGET_EVENTS_PER_S, True)}"
    )
    us = run["cpu_s"] / max(1, run["applied"]) * 1e6
    result["cpu_us_per_event"] = us
    print(
        f"  worker CPU {run['cpu_s']:.1f} s = {us:.0f} us/event (all its threads):"
        f" one core to itself would take about {1e6 / us:,.0f} events/s"
    )
    if "seconds_after_first_batch" in run:
        r2 = run["events_after_first_batch"] / run["seconds_after_first_batch"]
        result["events_per_s_after_first_batch"] = r2
        print(f"  without the process start-up: {r2:,.0f} events/s")
    print(
        f"  store: {counts['profiles']:,} profiles, {counts['identities']:,} identities,"
        f" {counts['merges']:,} merges, {counts['events_applied']:,} events applied;"
        f" lag after {lag}: {'OK' if result['verified'] else 'MISMATCH'}"
    )
    write_json(args.json, result)
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
