"""Next-best-action latency at a fixed request rate (target: p99 at most 10 ms at 500/s).

``tessera serve`` (the embedded default, the demo configuration with its
actions catalog) is loaded through the HTTP API with members
(``pzlib.member_events``: consent, tier, tows, roadside calls, travel) and
the processors catch up. Then this process sends
``GET /v1/profiles/member_number:<n>/next-best-action?channel=contact_center&limit=3``
for random members at a fixed rate, open loop (request *i* starts at
``start + i / rate`` whatever happened to the others, and its latency runs
from that scheduled time to the end of the answer, so queueing shows).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    CpuMeter,
    Pool,
    Tessera,
    fast_event_loop,
    free_port,
    get_head,
    latency_summary,
    machine_line,
    open_loop,
    server_pids,
    verdict,
)
from pzlib import DECISIONS_KEY, member_events, member_number, send_members, wait_caught_up

TARGET_P99_MS = 10.0


PATHS = {
    "nba": "/v1/profiles/member_number:{}/next-best-action?channel=contact_center&limit=3",
    "segments": "/v1/profiles/member_number:{}/segments",
    "profile": "/v1/profiles/member_number:{}",
}


async def measure(port: int, members: int, rate: float, seconds: float,
                  seed: int, endpoint: str = "nba") -> dict[str, Any]:
    rng = random.Random(seed)
    pool = Pool(port)
    heads = [get_head(PATHS[endpoint].format(member_number(i)), DECISIONS_KEY)
             for i in range(members)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    offered = 0

    async def decide(i: int, at: float) -> None:
        nonlocal offered
        try:
            status, body = await pool.request(rng.choice(heads))
        except (OSError, asyncio.IncompleteReadError):
            status, body = 0, b""
        latencies.append(time.perf_counter() - at)
        statuses[status] = statuses.get(status, 0) + 1
        offered += b'"rank"' in body

    late = await open_loop(rate, seconds, decide)
    pool.close()
    return {"latency_ms": latency_summary(latencies), "statuses": statuses,
            "with_an_action": offered, "generator_late_ms": latency_summary(late)}


def api_processes(server: Tessera) -> list[int]:
    """The API processes ``serve --api-processes N`` spawned (not its processors)."""
    return [pid for pid in server.pids()[1:]
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=500.0, help="decisions per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--endpoint", choices=sorted(PATHS), default="nba",
                        help="what to request (profile: the plain lookup, for comparison)")
    parser.add_argument("--api-processes", type=int, default=1,
                        help="tessera serve --api-processes N (API processes sharing the port)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tessera-nba-"))
    data = base / "data"
    print(f"nba_latency: {machine_line()} (before loading)")
    fast_event_loop()
    try:
        serve = ["serve", "--api-processes", str(args.api_processes)]
        with Tessera(serve, data, port=free_port()).start() as server:
            started = time.perf_counter()
            rng = random.Random(args.seed)
            events = [o for i in range(args.members) for o in member_events(i, rng)]
            send_members(server.url, events)
            wait_caught_up(data, 900)
            print(f"  loaded {len(events):,} events of {args.members:,} members "
                  f"({time.perf_counter() - started:.0f} s)")
            assert server.port is not None
            if args.warmup:
                asyncio.run(measure(server.port, args.members, args.rate, args.warmup, 1,
                                    args.endpoint))
            load = machine_line()
            pids = server_pids(server)
            if args.api_processes > 1:  # the API runs in the processes uvicorn spawned
                pids = {f"api{i}": pid for i, pid in enumerate(api_processes(server))}
            meter = CpuMeter(pids).start()
            result = asyncio.run(measure(server.port, args.members, args.rate, args.duration,
                                         args.seed, args.endpoint))
            cpu = meter.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lat = result["latency_ms"]
    n = lat["count"]
    print(f"  measured at: {load}")
    print(f"  GET {PATHS[args.endpoint].format('<member>')}")
    print(f"  {args.rate:.0f} requests/s for {args.duration:.0f} s: {result['statuses']}, "
          f"{result['with_an_action']:,} of {n:,} answers offered an action")
    print(f"  latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
          f"p99.9 {lat['p99.9']:.2f}  max {lat['max']:.2f}")
    api_cpu = sum(v for k, v in cpu.items() if k.startswith("api"))
    print(f"  API CPU ({args.api_processes} process(es)): {api_cpu:.1f} s, "
          f"{api_cpu / max(n, 1) * 1000:.2f} ms a request")
    print(f"  generator late p99 {result['generator_late_ms']['p99']:.2f} ms")
    print(f"  target: p99 at most {TARGET_P99_MS:.0f} ms at {args.rate:.0f}/s: "
          f"{verdict(lat['p99'], TARGET_P99_MS, False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
