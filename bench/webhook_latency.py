"""Webhook latency: from an event's 2xx at ingest to its webhook arriving at a receiver.

``tessera serve`` (API and worker, the embedded default) runs with the demo
configuration plus one subscription to a receiver on 127.0.0.1 (a minimal
HTTP/1.1 server in a process of its own). This process sends CloudEvents batches at a fixed
rate (default 1,000 events/s as 100 batches of 10 a second, open loop), each
event to one of ``--people`` profiles, and notes when each batch is answered
2xx. The receiver notes when each event's webhook arrives. The latency of an
event is arrival minus its batch's 2xx (both on this machine's wall clock). The
warm-up's events are not counted; an event not received after ``--give-up``
seconds counts as infinitely late.

The load starts once a first event has made its way to the receiver (the
processors are up and the subscription is running). From then until the last
webhook arrives, the CPU time of each process is measured: the API, each
processor of ``tessera serve`` and the benchmark's own generator and receiver,
as a share of one core and, for the activation processor, per webhook.

    .venv/bin/python bench/webhook_latency.py [--rate 1000] [--seconds 20] [--shape fat]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from benchlib import (
    CE_BATCH,
    CRM_KEY,
    CpuMeter,
    Pool,
    Spy,
    Tessera,
    add_profile_options,
    cpu_seconds,
    fast_event_loop,
    free_port,
    latency_summary,
    machine_line,
    open_loop,
    post_head,
    server_pids,
    verdict,
    write_json,
)

TARGET_P99_MS = 300.0


class _ReceiverProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, POST with Content-Length only: what the webhook sender
    sends. A parser this small keeps the harness's own CPU out of the measurement (a
    full ASGI server cost about half a core at 1,000 webhooks/s on this machine)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        now = time.time()  # when the bytes arrived, before any parsing
        self.buffer = self.buffer + data if self.buffer else data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4:head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            self.receiver.received(body, now)
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


class Receiver:
    """Where the webhooks arrive: the HTTP server runs in a process of its own (a thread of
    this process would wait for the load generator's interpreter lock before noting an
    arrival, and add that wait to the latency); :meth:`arrived` fetches what it noted."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.port = free_port()
        self._pipe: Any = None
        self._process: multiprocessing.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def received(self, body: bytes, now: float) -> None:
        self.requests += 1
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self.arrivals.setdefault(orjson.loads(body)["id"], now)

    def start(self) -> Receiver:
        parent, child = multiprocessing.Pipe()
        self._pipe = parent
        self._process = multiprocessing.get_context("fork").Process(
            target=self._serve, args=(child,), daemon=True)
        self._process.start()
        assert parent.recv() == "listening"
        return self

    def _serve(self, pipe: Any) -> None:
        async def serve() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(lambda: _ReceiverProtocol(self), "127.0.0.1",
                                              self.port)
            pipe.send("listening")
            while True:
                if await asyncio.to_thread(pipe.poll, 0.1):
                    ask = pipe.recv()
                    if ask == "stop":
                        break
                    pipe.send(orjson.dumps({"arrivals": self.arrivals,
                                            "requests": self.requests}))
            server.close()

        fast_event_loop()
        asyncio.run(serve())

    def arrived(self) -> dict[str, float]:
        """What has arrived so far: event id to arrival time (this machine's clock)."""
        self._pipe.send("report")
        report = orjson.loads(self._pipe.recv())
        self.requests = report["requests"]
        self.arrivals = report["arrivals"]
        return self.arrivals

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._pipe.send("stop")
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()


def config_file(directory: Path, receiver: Receiver, shape: str,
                personalization: bool = False) -> Path:
    from tessera.config import DEFAULT_CONFIG_FILE

    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    if not personalization:  # its own processor, not on the webhook's path: measured apart
        raw.pop("personalization", None)
    raw["subscriptions"] = [{
        "name": "bench", "filter": {"types": ["com.example.crm.*"]}, "shape": shape,
        "destination": {"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook",
                        "secret": "whsec_YmVuY2htYXJrLXNlY3JldC0wMTIzNDU2Nzg5",
                        "max_concurrency": 64},
    }]
    path = directory / "tessera.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def batch_body(i: int, batch: int, people: int) -> tuple[list[str], bytes]:
    ids = [f"b{i}-{k}" for k in range(batch)]
    events = [{
        "specversion": "1.0", "id": event_id, "source": "bench/crm",
        "type": "com.example.crm.contact.updated",
        "data": {"email": f"person{(i * batch + k) % people}@example.com",
                 "traits": {"bench_n": i * batch + k}},
    } for k, event_id in enumerate(ids)]
    return ids, orjson.dumps(events)


async def drive(port: int, rate: float, seconds: float, batch: int, people: int
                ) -> dict[str, float]:
    """Open loop: a batch every ``batch / rate`` seconds, each on a keep-alive connection
    of a small raw HTTP/1.1 pool (a full client's CPU would be taken from the server's
    two cores); the 2xx time is noted as soon as the response is read."""
    accepted: dict[str, float] = {}
    pool = Pool(port, limit=32)

    async def fire(i: int, _: float) -> None:
        ids, body = batch_body(i, batch, people)
        status, _ = await pool.request(post_head("/v1/events", CRM_KEY, CE_BATCH, len(body)),
                                       body)
        now = time.time()
        if status == 202:
            for event_id in ids:
                accepted[event_id] = now

    try:
        await open_loop(rate / batch, seconds, fire)
    finally:
        pool.close()
    return accepted


def wait_first_webhook(port: int, receiver: Receiver, timeout: float = 120.0) -> None:
    """Events through the whole path before the load starts, one every half second until
    one arrives (a subscription starts reading at its creation: events sent before the
    worker created it are not its business): the processors are up, the subscription is
    running and the sender's first connection is open. These events are not counted."""
    async def probe(n: int) -> str:
        pool = Pool(port, limit=1)
        try:
            event = {"specversion": "1.0", "id": f"probe-{n}", "source": "bench/crm",
                     "type": "com.example.crm.contact.updated",
                     "data": {"email": "probe@example.com"}}
            body = orjson.dumps([event])
            status, _ = await pool.request(
                post_head("/v1/events", CRM_KEY, CE_BATCH, len(body)), body)
            assert status == 202, status
        finally:
            pool.close()
        return str(event["id"])

    deadline = time.monotonic() + timeout
    sent: set[str] = set()
    while not sent & set(receiver.arrived()):
        if time.monotonic() > deadline:
            raise TimeoutError("no webhook arrived")
        sent.add(asyncio.run(probe(len(sent))))
        time.sleep(0.5)


def cpu_lines(used: dict[str, float], seconds: float, webhooks: int) -> list[str]:
    lines = []
    for name, cpu in used.items():
        line = f"    {name:<16} {cpu / seconds:6.1%} of a core"
        if name == "activation" and webhooks:
            line += f", {cpu / webhooks * 1e6:.0f} µs per webhook"
        lines.append(line)
    lines.append(f"    {'total':<16} {sum(used.values()) / seconds:6.1%} of a core")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--shape", default="fat", choices=["fat", "event", "notification"])
    parser.add_argument("--give-up", type=float, default=30.0)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--with-personalization", action="store_true",
                        help="keep the demo's computed traits and audiences (a third processor "
                             "competing for the same cores)")
    add_profile_options(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tessera-webhook-bench-"))
    keep = args.keep
    receiver = Receiver()
    receiver.start()
    spy: Spy | None = None
    try:
        cfg = config_file(work, receiver, args.shape, args.with_personalization)
        port = free_port()
        with Tessera(["serve", "--config", str(cfg)], work / "data", port).start() as t:
            wait_first_webhook(port, receiver)
            pids = server_pids(t)
            if args.profile:
                spy = Spy({"activation": pids["activation"]}, Path(args.profile),
                          args.profile_mode)
            assert receiver.pid is not None
            meter = CpuMeter({**pids, "receiver": receiver.pid}).start()
            own_before = cpu_seconds(os.getpid())
            started = time.monotonic()
            fast_event_loop()
            accepted = asyncio.run(drive(port, args.rate, args.seconds, args.batch,
                                         args.people))
            deadline = time.monotonic() + args.give_up
            waiting = set(accepted)
            while time.monotonic() < deadline and waiting:
                arrived = receiver.arrived()
                waiting = {e for e in waiting if e not in arrived}
                time.sleep(0.05)
            used = meter.stop()
            used["generator"] = cpu_seconds(os.getpid()) - own_before
            elapsed = time.monotonic() - started
            arrived = receiver.arrived()
            if spy is not None:
                spy.stop()
    finally:
        receiver.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    warm = int(args.warmup * args.rate)
    counted = [eid for eid in sorted(accepted, key=lambda e: accepted[e])][warm:]
    latencies = [max(0.0, arrived[e] - accepted[e]) if e in arrived
                 else math.inf for e in counted]
    summary = latency_summary(latencies)
    missing = sum(1 for x in latencies if x == math.inf)
    webhooks = sum(1 for e in accepted if e in arrived)
    print(f"webhook latency, accepted (2xx) -> received, shape {args.shape!r}, "
          f"{args.rate:.0f} events/s for {args.seconds:.0f} s ({args.batch} per request), "
          f"personalization {'on' if args.with_personalization else 'off'}")
    print(f"  {machine_line()}")
    print(f"  events counted {len(counted)} (after {args.warmup:.0f} s warm-up), "
          f"not received {missing}, webhook requests {receiver.requests}")
    print(f"  p50 {summary['p50']:.1f} ms, p90 {summary['p90']:.1f} ms, "
          f"p99 {summary['p99']:.1f} ms, p99.9 {summary['p99.9']:.1f} ms, "
          f"max {summary['max']:.1f} ms")
    print(f"  target p99 <= {TARGET_P99_MS:.0f} ms: "
          f"{verdict(summary['p99'], TARGET_P99_MS, higher_is_better=False)}")
    print(f"  CPU over the {elapsed:.1f} s from the first batch to the last webhook:")
    print("\n".join(cpu_lines(used, elapsed, webhooks)))
    if spy is not None:
        print(spy.report())
    activation_us = used["activation"] / webhooks * 1e6 if webhooks else math.nan
    write_json(args.json, {"shape": args.shape, "rate": args.rate, "seconds": args.seconds,
                           "latency_ms": summary, "not_received": missing,
                           "cpu_share": {k: v / elapsed for k, v in used.items()},
                           "activation_us_per_webhook": activation_us,
                           "machine": machine_line()})
    return 0 if summary["p99"] <= TARGET_P99_MS and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
