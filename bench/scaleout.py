"""Processing throughput on NATS JetStream + PostgreSQL with 1, 2 and 4 workers.

N events (the synthetic population of ``benchlib``: anonymous visits, logins,
CRM and membership records, so many profiles are created apart and merged
later) are loaded once into a fresh NATS stream through the real HTTP API
(``tessera serve --no-worker``), which is then stopped. For each worker
count, the profiles group is rewound to the start of that stream (as
``tessera replay`` does) and given an empty PostgreSQL schema of its own, and
``tessera worker --concurrency K`` runs until every event is applied. The
figure is events applied divided by the time from the first applied batch to
the last (process start-up excluded; the time including it is printed too).
The CPU seconds the worker processes used are printed as well: on a machine
shared with other work, events per CPU-second say more than events/s. Two
figures: all of the workers' CPU (start-up included, from the finished
processes), and the CPU per event of the processing itself, read from
``/proc`` between the first applied batch and the last (the workers', and the
PostgreSQL and NATS servers' as a whole, which includes whatever else uses
them meanwhile).
The embedded default (SQLite bus and store, one worker process) runs the same
events for comparison.

Needs NATS on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432 (database
``test``, or ``--nats`` / ``--postgres``); streams and schemas it made are
removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from benchlib import (
    Tessera,
    bus_counts,
    cpu_seconds,
    event_stream,
    free_port,
    machine_line,
    population,
    send_stream,
    verdict,
    write_json,
)
from psycopg import sql

from tessera.bus.nats import delete_streams

TARGET_2_WORKERS = 5_000
WORKERS = (1, 2, 4)


def env_for(bus: str | None, store: str | None) -> None:
    for name, value in (("TESSERA_BUS_URL", bus), ("TESSERA_STORE_URL", store)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def applied(server: str, schema: str) -> int:
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        try:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.applied").format(sql.Identifier(schema))
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


async def rewind(bus_url: str) -> int:
    from tessera.bus.nats import NatsBus

    bus = NatsBus(bus_url)
    await bus.start()
    try:
        await bus.reset("events", "profiles", 0.0)
        return await bus.lag("events", "profiles")
    finally:
        await bus.close()


async def nats_lag(bus_url: str) -> int:
    from tessera.bus.nats import NatsBus

    bus = NatsBus(bus_url)
    await bus.start()
    try:
        return await bus.lag("events", "profiles")
    finally:
        await bus.close()


def children_cpu() -> float:
    """CPU seconds of the finished child processes (and the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def service_pids() -> dict[str, list[int]]:
    """PostgreSQL's and NATS's processes on this machine, by command name."""
    out: dict[str, list[int]] = {"postgres": [], "nats": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "postgres":
            out["postgres"].append(int(entry.name))
        elif comm == "nats-server":
            out["nats"].append(int(entry.name))
    return out


def cpu_now(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far per named group of processes (a process gone since counts 0)."""
    out = {}
    for name, group in pids.items():
        values = [cpu_seconds(p) for p in group]
        out[name] = sum(v for v in values if v == v)
    return out


def timed_run(data: Path, events: int, progress: Any, timeout: float,
              args: list[str]) -> dict[str, Any]:
    """Start ``tessera worker ARGS`` and time it until ``progress()`` reaches ``events``."""
    started = time.perf_counter()
    cpu_before = children_cpu()
    first: tuple[float, int] | None = None
    worker = Tessera(["worker", "--log-level", "warning", *args], data).start()
    pids: dict[str, list[int]] = {}
    cpu_first: dict[str, float] = {}
    try:
        while True:
            done = progress()
            now = time.perf_counter()
            if first is None and done > 0:
                first = (now, done)
                pids = {"workers": worker.pids(), **service_pids()}
                cpu_first = cpu_now(pids)
            if done >= events:
                break
            if now - started > timeout:
                raise TimeoutError(f"{done} of {events} applied after {timeout} s")
            time.sleep(0.05)
        finished = time.perf_counter()
        cpu_last = cpu_now(pids)
    finally:
        worker.stop()
    assert first is not None
    cpu = children_cpu() - cpu_before
    steady = events - first[1]
    per_event = {name: (cpu_last[name] - cpu_first[name]) / steady * 1e6 for name in cpu_last}
    return {
        "steady_cpu_us_per_event": per_event,
        "worker_cpu_seconds": cpu,
        "events_per_worker_cpu_second": events / cpu,
        "seconds_with_startup": finished - started,
        "seconds": finished - first[0],
        "events_per_s": (events - first[1]) / (finished - first[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Processing throughput with 1, 2 and 4 workers on NATS + PostgreSQL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--people", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded run")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--processors", default="profiles",
                        help="what the workers run (tessera worker --processors): the event "
                             "processing measured here is the profiles processor's; 'all' "
                             "adds activation and personalization in the same processes")
    args = parser.parse_args(argv)
    processors = ["--processors", args.processors]

    run_id = uuid.uuid4().hex[:10]
    prefix = f"BENCH{run_id.upper()}"
    bus_url = f"{args.nats}?stream_prefix={prefix}&subject_prefix=bench{run_id}"
    base = Path(tempfile.mkdtemp(prefix="tessera-bench-scaleout-"))
    schemas: list[str] = []
    results: dict[str, Any] = {"benchmark": "scaleout", "events": args.events,
                               "people": args.people, "runs": {}}
    print(f"scaleout: {machine_line()}")
    stream = event_stream(population(args.people, args.seed), args.events, args.seed + 1)
    try:
        # 1. the backlog, through the real API, into a fresh stream
        schema = f"bench_{run_id}_load"
        schemas.append(schema)
        env_for(bus_url, f"{args.postgres}?schema={schema}")
        started = time.perf_counter()
        with Tessera(["serve", "--no-worker"], base / "load", port=free_port()).start() as api:
            accepted = send_stream(api.url, stream)
        lag = asyncio.run(nats_lag(bus_url))
        print(f"  backlog: {accepted:,} events in the NATS stream "
              f"(over HTTP in {time.perf_counter() - started:.1f} s), lag {lag:,}")
        assert lag == accepted

        # 2. 1, 2, 4 workers, each on an empty schema, the group rewound
        for k in (int(w) for w in args.workers.split(",")):
            schema = f"bench_{run_id}_w{k}"
            schemas.append(schema)
            env_for(bus_url, f"{args.postgres}?schema={schema}")
            assert asyncio.run(rewind(bus_url)) == accepted
            one, five, _ = os.getloadavg()
            run = timed_run(base / f"w{k}", accepted, lambda s=schema: applied(args.postgres, s),
                            args.timeout, ["--concurrency", str(k), *processors])
            run["load_before"] = [round(one, 2), round(five, 2)]
            run["lag_after"] = asyncio.run(nats_lag(bus_url))
            results["runs"][f"nats+postgres x{k}"] = run
            print(f"  NATS + PostgreSQL, {k} worker(s): {run['events_per_s']:,.0f} events/s"
                  f" ({run['seconds']:.1f} s; {run['seconds_with_startup']:.1f} s with start-up;"
                  f" load before {one:.2f}); lag after: {run['lag_after']};"
                  f" worker CPU {run['worker_cpu_seconds']:.1f} s ="
                  f" {run['events_per_worker_cpu_second']:,.0f} events per CPU-second")
            print("    CPU per event while processing: " + ", ".join(
                f"{name} {us:,.0f} µs" for name, us in run["steady_cpu_us_per_event"].items()))

        # 3. the embedded default, the same events, one worker process
        if not args.no_embedded:
            env_for(None, None)
            data = base / "embedded"
            with Tessera(["serve", "--no-worker"], data, port=free_port()).start() as api:
                send_stream(api.url, stream)
            total, _ = bus_counts(data)
            run = timed_run(data, total, lambda: total - bus_counts(data)[1], args.timeout,
                            processors)
            results["runs"]["embedded x1"] = run
            print(f"  embedded default (SQLite), 1 worker: {run['events_per_s']:,.0f} events/s"
                  f" ({run['seconds']:.1f} s); worker CPU {run['worker_cpu_seconds']:.1f} s ="
                  f" {run['events_per_worker_cpu_second']:,.0f} events per CPU-second")
    finally:
        env_for(None, None)
        with contextlib.suppress(Exception):
            asyncio.run(delete_streams(args.nats, prefix))
        with contextlib.suppress(psycopg.Error), psycopg.connect(
                args.postgres, autocommit=True, connect_timeout=5) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
        shutil.rmtree(base, ignore_errors=True)
    results["machine"] = machine_line()
    two = results["runs"].get("nats+postgres x2")
    if two is not None:
        print(f"  2 workers: {two['events_per_s']:,.0f} events/s, target >= "
              f"{TARGET_2_WORKERS:,}: {verdict(two['events_per_s'], TARGET_2_WORKERS, True)}")
    print(f"  after: {machine_line()}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
