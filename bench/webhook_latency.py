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

    .venv/bin/python bench/webhook_latency.py [--rate 1000] [--seconds 20] [--shape fat]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from benchlib import (
    CE_BATCH,
    CRM_KEY,
    Tessera,
    free_port,
    latency_summary,
    machine_line,
    open_loop,
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
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
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
            self.receiver.received(body)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


class Receiver:
    """Where the webhooks arrive: the HTTP server runs in a process of its own (a thread of
    this process would wait for the load generator's interpreter lock before noting an
    arrival, and add that wait to the latency); :meth:`arrived` fetches what it noted."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.port = free_port()
        self.should_exit = False
        self._pipe: Any = None
        self._process: multiprocessing.Process | None = None

    def received(self, body: bytes) -> None:
        now = time.time()
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


async def drive(url: str, rate: float, seconds: float, batch: int, people: int
                ) -> dict[str, float]:
    accepted: dict[str, float] = {}
    batches_per_second = rate / batch
    async with httpx.AsyncClient(base_url=url, timeout=30.0,
                                 limits=httpx.Limits(max_connections=32)) as client:
        async def fire(i: int, _: float) -> None:
            events = [{
                "specversion": "1.0", "id": f"b{i}-{k}", "source": "bench/crm",
                "type": "com.example.crm.contact.updated",
                "data": {"email": f"person{(i * batch + k) % people}@example.com",
                         "traits": {"bench_n": i * batch + k}},
            } for k in range(batch)]
            r = await client.post("/v1/events", content=orjson.dumps(events), headers={
                "Authorization": f"Bearer {CRM_KEY}", "Content-Type": CE_BATCH})
            now = time.time()
            if r.status_code == 202:
                for e in events:
                    accepted[e["id"]] = now

        await open_loop(batches_per_second, seconds, fire)
    return accepted


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
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tessera-webhook-bench-"))
    keep = args.keep
    receiver = Receiver()
    server = receiver.start()
    try:
        cfg = config_file(work, receiver, args.shape, args.with_personalization)
        with Tessera(["serve", "--config", str(cfg)], work / "data", free_port()).start() as t:
            time.sleep(1.0)  # the worker starts its subscription
            accepted = asyncio.run(drive(t.url, args.rate, args.seconds, args.batch,
                                         args.people))
            deadline = time.monotonic() + args.give_up
            waiting = set(accepted)
            while time.monotonic() < deadline and waiting:
                arrived = receiver.arrived()
                waiting = {e for e in waiting if e not in arrived}
                time.sleep(0.2)
            arrived = receiver.arrived()
    finally:
        server.stop()
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
    write_json(args.json, {"shape": args.shape, "rate": args.rate, "seconds": args.seconds,
                           "latency_ms": summary, "not_received": missing,
                           "machine": machine_line()})
    return 0 if summary["p99"] <= TARGET_P99_MS and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
