"""Freshness: from an event's 2xx to its effect being visible in its profile.

``tessera serve`` runs the API and the worker (the embedded default). This
process sends CloudEvents batches at a fixed rate (default 2,000 events/s as
20 batches of 100 per second, open loop: batch *i* is sent at
``start + i / batches_per_second`` whatever happened to earlier ones). Every
event sets the trait ``bench_token`` to a value used nowhere else on one of
``--people`` background profiles.

One event of every batch (``--probes-per-batch``) goes to a probe profile that
no other event touches while the probe is outstanding. When the POST of its
batch is answered 2xx, a poller starts asking ``GET /v1/profiles/email:<probe>``
every ``--poll-interval`` and the freshness of the event is the time from that
2xx to the answer of the first GET that shows the probe's value (an upper
bound; the resolution is the poll interval plus one request). Probes of the
warm-up are not counted; a probe not seen after ``--give-up`` seconds counts
as infinitely late.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    CE_BATCH,
    CRM_KEY,
    CpuMeter,
    Pool,
    Tessera,
    add_profile_options,
    fast_event_loop,
    free_port,
    get_head,
    latency_summary,
    machine_line,
    open_loop,
    post_head,
    processors_cpu,
    server_pids,
    spy_on,
    verdict,
    wait_lag_zero,
    write_json,
)

TARGET_P99_MS = 250.0


def event(event_id: str, email: str, token: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "https://crm.example.com",
        "type": "com.example.crm.record.updated",
        "datacontenttype": "application/json",
        "data": {"email": email, "traits": {"bench_token": token}},
    }


def person(i: int) -> str:
    return f"fresh.{i}@example.com"


def probe(i: int) -> str:
    return f"probe.{i}@example.com"


def create_profiles(url: str, port: int, people: int, probes: int, run: str) -> None:
    """One event per background person and per probe, so that the profiles exist."""
    emails = [person(i) for i in range(people)] + [probe(i) for i in range(probes)]

    async def go() -> None:
        pool = Pool(port, limit=4)
        for start in range(0, len(emails), 500):
            chunk = emails[start : start + 500]
            body = json.dumps(
                [event(f"{run}-init-{start + n}", e, "init") for n, e in enumerate(chunk)]
            ).encode()
            status, answer = await pool.request(
                post_head("/v1/events", CRM_KEY, CE_BATCH, len(body)), body
            )
            if status != 202:
                raise RuntimeError(f"creating profiles failed: {status} {answer[:300]!r}")
        pool.close()

    asyncio.run(go())
    wait_lag_zero(url, 300)


async def measure(args: argparse.Namespace, port: int, run: str) -> dict[str, Any]:
    post_pool = Pool(port)
    poll_pool = Pool(port)
    batches_per_s = args.rate / args.batch
    warmup_batches = int(args.warmup * batches_per_s)
    free_probes = list(range(args.probes))
    seen: list[float] = []
    missed = 0
    skipped = 0
    post_latency: list[float] = []
    post_status: dict[int, int] = {}
    polls = 0
    cursor = 0

    async def watch(email: str, token: str, acked: float, counted: bool, slot: int) -> None:
        nonlocal missed, polls
        head = get_head(f"/v1/profiles/email:{email}")
        deadline = acked + args.give_up
        try:
            while True:
                try:
                    status, body = await poll_pool.request(head)
                except (OSError, asyncio.IncompleteReadError):
                    status, body = 0, b""
                polls += 1
                now = time.perf_counter()
                if status == 200:
                    traits = json.loads(body)["traits"]
                    if traits.get("bench_token", {}).get("value") == token:
                        if counted:
                            seen.append(now - acked)
                        return
                if now > deadline:
                    if counted:
                        missed += 1
                    return
                await asyncio.sleep(args.poll_interval / 1000)
        finally:
            free_probes.append(slot)

    watchers: set[asyncio.Task[None]] = set()

    async def send(i: int, at: float) -> None:
        nonlocal cursor, skipped
        events = []
        probes: list[tuple[str, str, int]] = []
        for n in range(args.batch):
            token = f"{run}-{i}-{n}"
            if n < args.probes_per_batch and free_probes:
                slot = free_probes.pop(0)
                probes.append((probe(slot), token, slot))
                events.append(event(f"{run}-{i}-{n}", probe(slot), token))
            else:
                if n < args.probes_per_batch:
                    skipped += 1
                events.append(event(f"{run}-{i}-{n}", person(cursor % args.people), token))
                cursor += 1
        body = json.dumps(events).encode()
        t = time.perf_counter()
        try:
            status, _ = await post_pool.request(
                post_head("/v1/events", CRM_KEY, CE_BATCH, len(body)), body
            )
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        acked = time.perf_counter()
        post_status[status] = post_status.get(status, 0) + 1
        if i >= warmup_batches:
            post_latency.append(acked - t)
        if not 200 <= status < 300:
            free_probes.extend(slot for _, _, slot in probes)
            return
        for email, token, slot in probes:
            task = asyncio.create_task(watch(email, token, acked, i >= warmup_batches, slot))
            watchers.add(task)
            task.add_done_callback(watchers.discard)

    late = await open_loop(batches_per_s, args.warmup + args.duration, send)
    status, body = await poll_pool.request(get_head("/v1/stats"))
    lag_at_end = json.loads(body)["lag"]["profiles"] if status == 200 else -1
    while watchers:
        await asyncio.gather(*list(watchers))
    post_pool.close()
    poll_pool.close()
    measured = sorted(seen)
    # a missed probe is infinitely late: it takes the top ranks
    with_missed = measured + [math.inf] * missed
    lat = latency_summary(with_missed)
    return {
        "freshness_ms": lat,
        "probes_seen": len(measured),
        "probes_missed": missed,
        "probes_skipped": skipped,
        "polls": polls,
        "post_latency_ms": latency_summary(post_latency),
        "post_status": post_status,
        "sender_late_ms": latency_summary(late),
        "events_sent": sum(post_status.values()) * args.batch,
        "lag_at_end": lag_at_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Freshness: accepted event -> visible in its profile (tessera serve).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per second")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--people", type=int, default=5_000, help="background profiles")
    parser.add_argument("--probes", type=int, default=200, help="probe profiles")
    parser.add_argument("--probes-per-batch", type=int, default=1, help="probe events per batch")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="ms between polls")
    parser.add_argument("--give-up", type=float, default=10.0, help="seconds before a probe fails")
    parser.add_argument("--data-dir", help="data directory to use (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data directory")
    parser.add_argument("--json", help="also write the results to this file")
    add_profile_options(parser)
    args = parser.parse_args(argv)

    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    data = base / "freshness"
    if data.exists():
        shutil.rmtree(data)
    run = f"f{int(time.time())}"
    print(f"freshness: {machine_line()} (before loading)")
    fast_event_loop()
    try:
        with Tessera(["serve"], data, port=free_port()).start() as server:
            assert server.port is not None
            create_profiles(server.url, server.port, args.people, args.probes, run)
            load = machine_line()
            spy = spy_on(server, args.profile, args.profile_mode)
            meter = CpuMeter(server_pids(server)).start()
            result = asyncio.run(measure(args, server.port, run))
            cpu = meter.stop()
            if spy is not None:
                spy.stop()
                print(spy.report())
            caught_up = wait_lag_zero(server.url, 120)
    finally:
        if not args.keep and not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    lat = result["freshness_ms"]
    post = result["post_latency_ms"]
    late = result["sender_late_ms"]
    bad = sum(n for s, n in result["post_status"].items() if not 200 <= s < 300)
    print(f"  measured at: {load}")
    print(
        f"  sent {result['events_sent']:,} events at {args.rate:,.0f}/s in batches of"
        f" {args.batch} ({args.warmup:.0f} s warm-up + {args.duration:.0f} s), non-2xx {bad};"
        f" POST p50 {post['p50']:.1f} ms p99 {post['p99']:.1f} ms;"
        f" sender start lag p99 {late['p99']:.1f} ms"
    )
    print(
        f"  freshness (2xx -> visible via GET, poll every {args.poll_interval:g} ms):"
        f" p50 {lat['p50']:.1f} ms  p90 {lat['p90']:.1f} ms  p99 {lat['p99']:.1f} ms"
        f"  max {lat['max']:.1f} ms  over {result['probes_seen']:,} probes"
        f" (missed {result['probes_missed']}, skipped {result['probes_skipped']})"
        f"  target p99 <= {TARGET_P99_MS:.0f} ms: {verdict(lat['p99'], TARGET_P99_MS, False)}"
    )
    processors = processors_cpu(cpu)
    worker_us = processors / max(1, result["events_sent"]) * 1e6
    print(
        f"  CPU during the measurement: API {cpu.get('api', 0.0):.1f} s,"
        f" processors {processors:.1f} s = {worker_us:.0f} us/event sent"
        f" (profiles {cpu.get('profiles', 0.0):.1f} s; {result['polls']:,} polls)"
    )
    print(
        f"  worker lag when the last batch was sent: {result['lag_at_end']} events"
        f" (0 again {caught_up:.1f} s after the last probe)"
    )
    write_json(
        args.json,
        {
            "benchmark": "freshness",
            "machine": load,
            "rate": args.rate,
            "batch": args.batch,
            "duration": args.duration,
            "cpu_s": cpu,
            **result,
        },
    )
    return 0 if bad == 0 and result["probes_missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
