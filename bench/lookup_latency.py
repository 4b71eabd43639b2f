"""Profile lookup latency under a fixed request rate (open loop).

``tessera serve`` (API and worker, the embedded default) is loaded with the
profiles of about 5,000 synthetic people through the HTTP API and the worker
catches up. Then this process sends ``GET /v1/profiles/email:<address>`` for
random e-mail addresses the store holds at a fixed rate (default 500/s) for a
fixed time: request *i* is scheduled at ``start + i / rate`` and started then,
whether or not earlier requests have been answered, and its latency is
measured from the scheduled time to the end of the answer. A server that
falls behind therefore shows its queueing in the figures instead of slowing
the generator down (no coordinated omission).

``--ingest-rate`` adds a background stream of events (open loop too, batches
of 100) during the measurement, so that lookups compete with ingest and the
worker's writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchlib import (
    CE_BATCH,
    CRM_KEY,
    CpuMeter,
    Pool,
    Tessera,
    add_profile_options,
    event_stream,
    fast_event_loop,
    free_port,
    get_head,
    latency_summary,
    machine_line,
    open_loop,
    population,
    post_head,
    processors_cpu,
    send_stream,
    server_pids,
    spy_on,
    stats,
    store_values,
    verdict,
    wait_lag_zero,
    write_json,
)

TARGET_P99_MS = 5.0


async def measure(
    port: int,
    emails: list[str],
    rate: float,
    seconds: float,
    ingest_rate: float,
    ingest_bodies: list[bytes],
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    pool = Pool(port)
    ingest_pool = Pool(port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    heads = [get_head(f"/v1/profiles/email:{quote(e, safe='@')}") for e in emails]

    async def lookup(i: int, at: float) -> None:
        try:
            status, _ = await pool.request(rng.choice(heads))
        except (OSError, asyncio.IncompleteReadError):
            status = 0  # counted as an error, its latency as measured
        latencies.append(time.perf_counter() - at)
        statuses[status] = statuses.get(status, 0) + 1

    ingest_status: dict[int, int] = {}

    async def ingest(i: int, at: float) -> None:
        body = ingest_bodies[i % len(ingest_bodies)]
        try:
            status, _ = await ingest_pool.request(
                post_head("/v1/events", CRM_KEY, CE_BATCH, len(body)), body
            )
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        ingest_status[status] = ingest_status.get(status, 0) + 1

    jobs = [open_loop(rate, seconds, lookup)]
    if ingest_rate > 0:
        jobs.append(open_loop(ingest_rate / 100, seconds, ingest))
    late = (await asyncio.gather(*jobs))[0]
    pool.close()
    ingest_pool.close()
    return {
        "latency_ms": latency_summary(latencies),
        "statuses": statuses,
        "ingest_statuses": ingest_status,
        "generator_late_ms": latency_summary(late),
    }


def ingest_batches(people: int, rate: float, seconds: float, seed: int) -> list[bytes]:
    """CloudEvents batches of 100 with fresh ids, for the background ingest."""
    if rate <= 0:
        return []
    stream = [
        o
        for o in event_stream(population(people, seed), int(rate * seconds) * 3, seed + 99)
        if o.kind == "cloudevent"
    ]
    bodies = [o.body for o in stream]
    for n, b in enumerate(bodies):
        b["id"] = f"bg-{seed}-{n}"
    return [json.dumps(bodies[i : i + 100]).encode() for i in range(0, len(bodies), 100)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Profile lookup latency at a fixed request rate (open loop).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--people", type=int, default=5_000, help="synthetic people to load")
    parser.add_argument("--events", type=int, default=20_000, help="events to load them with")
    parser.add_argument("--rate", type=float, default=500.0, help="lookups per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--ingest-rate",
        type=float,
        default=0.0,
        help="background events/s (CloudEvents batches of 100) during the measurement",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", help="data directory to use (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data directory")
    parser.add_argument("--json", help="also write the results to this file")
    add_profile_options(parser)
    args = parser.parse_args(argv)

    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    data = base / "lookup"
    if data.exists():
        shutil.rmtree(data)
    print(f"lookup_latency: {machine_line()} (before loading)")
    fast_event_loop()
    try:
        with Tessera(["serve"], data, port=free_port()).start() as server:
            started = time.perf_counter()
            stream = event_stream(population(args.people, args.seed), args.events, args.seed + 1)
            send_stream(server.url, stream)
            wait_lag_zero(server.url, 600)
            counts = stats(server.url)["store"]
            print(
                f"  loaded {args.events:,} events from {args.people:,} people:"
                f" {counts['profiles']:,} profiles, {counts['identities']:,} identities,"
                f" {counts['merges']:,} merges ({time.perf_counter() - started:.1f} s)"
            )
            emails = store_values(data, "email", 1_000_000)
            bodies = ingest_batches(args.people, args.ingest_rate, args.duration, args.seed)
            assert server.port is not None
            if args.warmup > 0:
                asyncio.run(measure(server.port, emails, args.rate, args.warmup, 0, [], 1))
            load = machine_line()
            spy = spy_on(server, args.profile, args.profile_mode)
            meter = CpuMeter(server_pids(server)).start()
            result = asyncio.run(
                measure(
                    server.port,
                    emails,
                    args.rate,
                    args.duration,
                    args.ingest_rate,
                    bodies,
                    args.seed,
                )
            )
            cpu = meter.stop()
            if spy is not None:
                spy.stop()
                print(spy.report())
    finally:
        if not args.keep and not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    lat = result["latency_ms"]
    ok = result["statuses"].get(200, 0)
    errors = sum(n for s, n in result["statuses"].items() if s != 200)
    print(f"  measured at: {load}")
    print(
        f"  {args.rate:.0f} lookups/s for {args.duration:.0f} s over {len(emails):,} e-mails"
        + (f", with {args.ingest_rate:,.0f} events/s ingest" if args.ingest_rate else "")
        + f": {ok:,} ok, {errors} not 200 {result['statuses']}"
    )
    print(
        f"  latency from the scheduled time: p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms"
        f"  p99 {lat['p99']:.2f} ms  p99.9 {lat['p99.9']:.2f} ms  max {lat['max']:.2f} ms"
        f"  target p99 <= {TARGET_P99_MS} ms: {verdict(lat['p99'], TARGET_P99_MS, False)}"
    )
    lookups = sum(result["statuses"].values())
    api_ms = cpu.get("api", 0.0) / max(1, lookups) * 1000
    worker = "processors" if args.ingest_rate else "idle processors"
    ingest = " (ingest included)" if args.ingest_rate else ""
    print(
        f"  CPU during the measurement: API {cpu.get('api', 0.0):.1f} s ="
        f" {api_ms:.2f} ms/lookup{ingest} (one core to itself: about {1000 / api_ms:,.0f}"
        f" lookups/s), {worker} {processors_cpu(cpu):.1f} s"
    )
    late = result["generator_late_ms"]
    print(f"  generator start lag: p99 {late['p99']:.2f} ms, max {late['max']:.2f} ms")
    write_json(
        args.json,
        {
            "benchmark": "lookup_latency",
            "machine": load,
            "rate": args.rate,
            "duration": args.duration,
            "ingest_rate": args.ingest_rate,
            "store": counts,
            "cpu_s": cpu,
            "api_cpu_ms_per_lookup": api_ms,
            **result,
        },
    )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
