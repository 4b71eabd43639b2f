"""HTTP ingest throughput of ``tessera serve --no-worker`` on the embedded default.

A server with a fresh data directory takes batches of 100 events from a load
generator in a separate process: ``wrk`` with a Lua script when it is
installed (every request gets distinct event ids from a per-thread counter,
so deduplication never turns a request into a no-op), else an asyncio
generator in Python with N keep-alive connections. Each kind of batch
(CloudEvents ``/v1/events`` batch mode, Segment ``/v1/batch``) runs on its
own server: a short warm-up, then the measured run. Closed loop: every
connection sends its next batch as soon as the previous one is answered.

Afterwards the events stored in the bus (``bus.db``, table ``log``) are
counted and compared with the events the server acknowledged (the sum of
``accepted`` over the 2xx answers); they must be equal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchlib import (
    CE_BATCH,
    CRM_KEY,
    WEB_KEY,
    CpuMeter,
    Pool,
    Spy,
    Tessera,
    add_profile_options,
    bus_counts,
    event_stream,
    free_port,
    latency_summary,
    machine_line,
    population,
    post_head,
    verdict,
    write_json,
)

TARGET_EVENTS_PER_S = 20_000
PLACEHOLDER = "@@BENCH_ID@@"
GRACE_SECONDS = 3  # wrk keeps running this long after the last request was sent

KINDS = {
    "cloudevents": ("/v1/events", CRM_KEY, CE_BATCH),
    "segment": ("/v1/batch", WEB_KEY, "application/json"),
}


def template(kind: str, batch: int) -> list[str]:
    """A batch body split around its event ids: ``parts[0] id parts[1] id ... parts[-1]``."""
    people = population(5_000, seed=3)
    wanted = "segment" if kind == "segment" else "cloudevent"
    bodies = [o.body for o in event_stream(people, batch * 4, seed=5) if o.kind == wanted][:batch]
    if len(bodies) < batch:
        raise SystemExit("could not build a batch template")
    for b in bodies:
        b["messageId" if kind == "segment" else "id"] = PLACEHOLDER
    text = json.dumps({"batch": bodies} if kind == "segment" else bodies, ensure_ascii=False)
    return text.split(json.dumps(PLACEHOLDER))


# -- wrk ----------------------------------------------------------------------------

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local parts = {%(parts)s}
local path = %(path)s
local headers = {["Content-Type"] = %(ctype)s, ["Authorization"] = %(auth)s}
local run = %(run)s
local threads = {}
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

function init(args)
  started = now()
  deadline = started + tonumber(args[1])
  last = started
  counter, ok, bad, accepted, duplicates = 0, 0, 0, 0, 0
end

function delay()
  -- after the deadline no connection sends again, so every request sent is answered
  if now() >= deadline then return 3600000 end
  return 0
end

function request()
  counter = counter + 1
  local prefix = '"' .. run .. "-" .. tid .. "-" .. counter .. "-"
  local buf = {}
  local n = #parts
  for i = 1, n - 1 do
    buf[2 * i - 1] = parts[i]
    buf[2 * i] = prefix .. i .. '"'
  end
  buf[2 * n - 1] = parts[n]
  return wrk.format("POST", path, headers, table.concat(buf))
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    accepted = accepted + tonumber(string.match(body, '"accepted":(%%d+)') or "0")
    duplicates = duplicates + tonumber(string.match(body, '"duplicates":(%%d+)') or "0")
  else
    bad = bad + 1
  end
  last = now()
end

function done(summary, latency, requests)
  local t = {sent = 0, ok = 0, bad = 0, accepted = 0, duplicates = 0}
  local first, final = nil, 0
  for _, thread in ipairs(threads) do
    t.sent = t.sent + thread:get("counter")
    t.ok = t.ok + thread:get("ok")
    t.bad = t.bad + thread:get("bad")
    t.accepted = t.accepted + thread:get("accepted")
    t.duplicates = t.duplicates + thread:get("duplicates")
    local s, l = thread:get("started"), thread:get("last")
    if first == nil or s < first then first = s end
    if l > final then final = l end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"sent": %%d, "ok": %%d, "bad": %%d, "accepted": %%d, "duplicates": %%d, '
    .. '"seconds": %%.6f, "p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f, '
    .. '"socket_errors": %%d}\n',
    t.sent, t.ok, t.bad, t.accepted, t.duplicates, final - first,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout))
end
"""


def lua_string(s: str) -> str:
    level = "=" * 4
    while f"]{level}]" in s:
        level += "="
    return f"[{level}[{s}]{level}]"


def run_wrk(
    port: int, kind: str, parts: list[str], seconds: float, connections: int, threads: int, run: str
) -> dict[str, Any]:
    path, key, ctype = KINDS[kind]
    script = LUA % {
        "parts": ", ".join(lua_string(p) for p in parts),
        "path": json.dumps(path),
        "ctype": json.dumps(ctype),
        "auth": json.dumps(f"Bearer {key}"),
        "run": json.dumps(run),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        script_path = f.name
    try:
        cmd = [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{math.ceil(seconds) + GRACE_SECONDS}s",
            "--timeout",
            "30s",
            "-s",
            script_path,
            f"http://127.0.0.1:{port}{path}",
            "--",
            str(seconds),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        Path(script_path).unlink(missing_ok=True)
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["generator"] = f"wrk ({min(threads, connections)} threads)"
            return result
    raise RuntimeError(f"wrk printed no result:\n{out}")


# -- the Python generator (a separate process) -----------------------------------------


def run_python(
    port: int, kind: str, parts: list[str], seconds: float, connections: int, run: str
) -> dict[str, Any]:
    spec = {
        "port": port,
        "kind": kind,
        "parts": parts,
        "seconds": seconds,
        "connections": connections,
        "run": run,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--generate"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


ACCEPTED = re.compile(rb'"accepted":(\d+)')
DUPLICATES = re.compile(rb'"duplicates":(\d+)')


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    path, key, ctype = KINDS[spec["kind"]]
    parts = [p.encode() for p in spec["parts"]]
    pool = Pool(spec["port"], limit=spec["connections"])
    latencies: list[float] = []
    totals = {"sent": 0, "ok": 0, "bad": 0, "accepted": 0, "duplicates": 0}
    started = time.perf_counter()
    deadline = started + spec["seconds"]
    last = started

    async def connection(cid: int) -> None:
        nonlocal last
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            prefix = f'"{spec["run"]}-{cid}-{n}-'.encode()
            buf = [parts[0]]
            for i, part in enumerate(parts[1:], 1):
                buf += [prefix, str(i).encode(), b'"', part]
            body = b"".join(buf)
            t = time.perf_counter()
            status, answer = await pool.request(post_head(path, key, ctype, len(body)), body)
            last = time.perf_counter()
            latencies.append(last - t)
            totals["sent"] += 1
            if 200 <= status < 300:
                totals["ok"] += 1
                m, d = ACCEPTED.search(answer), DUPLICATES.search(answer)
                totals["accepted"] += int(m.group(1)) if m else 0
                totals["duplicates"] += int(d.group(1)) if d else 0
            else:
                totals["bad"] += 1

    await asyncio.gather(*(connection(c) for c in range(spec["connections"])))
    pool.close()
    lat = latency_summary(latencies)
    return {
        **totals,
        "seconds": last - started,
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "max_ms": lat["max"],
        "socket_errors": 0,
        "generator": f"python asyncio ({spec['connections']} connections)",
    }


# -- the benchmark -----------------------------------------------------------------------


def bench_kind(args: argparse.Namespace, kind: str, use_wrk: bool) -> dict[str, Any]:
    parts = template(kind, args.batch)
    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    data = base / f"ingest-{kind}"
    if data.exists():
        shutil.rmtree(data)
    server = Tessera(["serve", "--no-worker"], data, port=free_port()).start()
    try:
        assert server.port is not None

        def load(seconds: float, run: str) -> dict[str, Any]:
            if use_wrk:
                return run_wrk(
                    server.port or 0, kind, parts, seconds, args.connections, args.threads, run
                )
            return run_python(server.port or 0, kind, parts, seconds, args.connections, run)

        if args.warmup > 0:
            load(args.warmup, f"w{uuid.uuid4().hex[:8]}")
        before, _ = bus_counts(data)
        spy = None
        if args.profile:
            spy = Spy({f"api-{kind}": server.pids()[0]}, Path(args.profile), args.profile_mode)
        meter = CpuMeter({"api": server.pids()[0]}).start()
        result = load(args.duration, f"r{uuid.uuid4().hex[:8]}")
        result["api_cpu_s"] = meter.stop()["api"]
        if spy is not None:
            spy.stop()
            print(spy.report())
        after, _ = bus_counts(data)
    finally:
        server.stop()
        if not args.keep and not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    stored = after - before
    seconds = result["seconds"] or float("nan")
    result.update(
        kind=kind,
        batch=args.batch,
        connections=args.connections,
        stored=stored,
        events_per_s=result["accepted"] / seconds,
        requests_per_s=result["ok"] / seconds,
        api_cpu_us_per_event=result["api_cpu_s"] / max(1, result["accepted"]) * 1e6,
        verified=stored == result["accepted"] and result["bad"] == 0 and result["duplicates"] == 0,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="HTTP ingest throughput (tessera serve --no-worker, SQLite bus).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per kind")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument(
        "--kinds", default="cloudevents,segment", help="comma-separated: cloudevents, segment"
    )
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator; auto uses wrk when it is installed",
    )
    parser.add_argument("--data-dir", help="parent of the data directories (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data directories")
    parser.add_argument("--json", help="also write the results to this file")
    add_profile_options(parser)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        print(json.dumps(asyncio.run(generate(json.load(sys.stdin)))))
        return 0
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk), use --generator python")
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            parser.error(f"unknown kind {k!r}")

    print(f"ingest_http: {machine_line()}")
    results = []
    for kind in kinds:
        r = bench_kind(args, kind, bool(use_wrk))
        results.append(r)
        print(
            f"  {kind:<12} {r['events_per_s']:>9,.0f} events/s  {r['requests_per_s']:>7,.1f} req/s"
            f"  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms"
            f"  [{r['generator']}, {r['batch']}/request, {r['connections']} conns,"
            f" {r['seconds']:.1f} s]"
        )
        print(
            f"  {'':<12} acknowledged {r['accepted']:,} events, stored in bus {r['stored']:,}:"
            f" {'OK' if r['verified'] else 'MISMATCH'}"
            f" (non-2xx {r['bad']}, duplicates {r['duplicates']}, socket errors"
            f" {r['socket_errors']})  target >= {TARGET_EVENTS_PER_S:,} events/s:"
            f" {verdict(r['events_per_s'], TARGET_EVENTS_PER_S, True)}"
        )
        us = r["api_cpu_us_per_event"]
        print(
            f"  {'':<12} API process CPU {r['api_cpu_s']:.1f} s = {us:.0f} us/event"
            f" (all its threads): one core to itself would take about {1e6 / us:,.0f} events/s"
        )
    summary = {"benchmark": "ingest_http", "machine": machine_line(), "results": results}
    write_json(args.json, summary)
    return 0 if all(r["verified"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
