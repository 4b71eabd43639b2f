"""What schema validation at ingest costs: throughput with and without an event catalog.

The whole ingest request path runs in-process (the FastAPI app through an
ASGI transport, the embedded SQLite bus with ``synchronous=FULL`` as in
production), once with the demo configuration (no catalog: nothing is
validated) and once with the same configuration plus a catalog whose schema
covers every event sent (every event is validated; source mode ``enforce``).
Batches of 100 CloudEvents; the two runs alternate for ``--rounds`` rounds
so that a change in the machine's load hits both alike; the best round of
each is compared. Also printed: the cost of the validation call alone per
event (the catalog gate's ``screen``).

    python bench/validation_overhead.py [--batches 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tessera.api.app import create_app
from tessera.catalog.gate import Gate
from tessera.cli import configure_logging
from tessera.config import TesseraConfig, default_config, parse_config
from tessera.events import cloudevents
from tessera.identity.extract import IdentifierExtractor
from tessera.runtime import Runtime

TYPE = "com.example.membership.member.address_changed"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["op", "entity", "id", "after"],
    "properties": {
        "op": {"enum": ["c", "u", "d", "r"]},
        "entity": {"type": "string"},
        "id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "before": {"type": ["object", "null"]},
        "changed": {"type": "array", "items": {"type": "string"}},
        "after": {
            "type": "object",
            "required": ["member_number", "email", "address"],
            "properties": {
                "member_number": {"type": "string", "pattern": "^M[0-9]+$"},
                "email": {"type": "string", "maxLength": 200},
                "first_name": {"type": "string"},
                "tier": {"enum": ["classic", "plus", "premier"]},
                "address": {"type": "object", "required": ["city"],
                            "properties": {"street": {"type": "string"},
                                           "city": {"type": "string"},
                                           "postcode": {"type": "string"}}},
            },
        },
    },
}


def with_catalog(base: TesseraConfig) -> TesseraConfig:
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["catalog"] = {"validation": "enforce", "events": [{
        "type": TYPE, "kind": "entity_change", "entity": "member", "operation": "update",
        "versions": [{"version": 1, "schema": SCHEMA}]}]}
    return parse_config(raw)


def batch(start: int, size: int = 100) -> bytes:
    events = []
    for i in range(start, start + size):
        after = {"member_number": f"M{i % 5000:07d}", "email": f"person{i % 5000}@example.com",
                 "first_name": "Ada", "tier": "plus",
                 "address": {"street": f"{i} Main St", "city": "Oslo", "postcode": "0150"}}
        events.append({"specversion": "1.0", "id": f"evt-{i}", "source": "membership",
                       "type": TYPE, "time": "2026-01-02T03:04:05Z",
                       "data": {"op": "u", "entity": "member", "id": after["member_number"],
                                "version": 2, "before": None, "after": after,
                                "changed": ["address"]}})
    return orjson.dumps(events)


async def run(config: TesseraConfig, batches: int, offset: int) -> float:
    """Events per second through the ingest endpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(config, Path(tmp))
        app = create_app(runtime)
        bodies = [batch(offset + n * 100) for n in range(batches)]
        headers = {"Authorization": "Bearer wk_membership_123",
                   "Content-Type": "application/cloudevents-batch+json"}
        async with (app.router.lifespan_context(app),
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url="http://bench") as client):
            await client.post("/v1/events", content=batch(10**9), headers=headers)  # warm-up
            queue = list(bodies)

            async def sender() -> None:
                while queue:
                    body = queue.pop()
                    r = await client.post("/v1/events", content=body, headers=headers)
                    assert r.status_code == 202, r.text

            started = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(8)))
            elapsed = time.perf_counter() - started
    return batches * 100 / elapsed


def gate_cost(config: TesseraConfig, events: int = 20_000) -> float:
    """Microseconds per event of the validation call alone."""
    gate = Gate(config, None)
    extractor = IdentifierExtractor(config)
    parsed = []
    for start in range(0, events, 100):
        parsed.append(cloudevents.parse_batch(orjson.loads(batch(start)), "membership",
                                              time.time(), extractor))
    started = time.perf_counter()
    for chunk in parsed:
        screened = gate.screen("membership", chunk)
        assert screened.accepted is chunk
    return (time.perf_counter() - started) / events * 1e6


def main() -> None:
    configure_logging("warning")  # as `tessera serve` runs: no line per request
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TESSERA_SQLITE_SYNCHRONOUS", "FULL")
    plain = default_config()
    validated = with_catalog(plain)
    results: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.rounds):
        results["without"].append(asyncio.run(run(plain, args.batches, r * 10**6)))
        results["with"].append(asyncio.run(run(validated, args.batches, r * 10**6)))
    best_without, best_with = max(results["without"]), max(results["with"])
    overhead = (1 - best_with / best_without) * 100
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"ingest without validation: {best_without:10,.0f} events/s "
          f"(rounds: {', '.join(f'{x:,.0f}' for x in results['without'])})")
    print(f"ingest with validation:    {best_with:10,.0f} events/s "
          f"(rounds: {', '.join(f'{x:,.0f}' for x in results['with'])})")
    print(f"throughput cost of validation: {overhead:.1f}% (target: at most 20%)")
    print(f"validation call alone: {gate_cost(validated):.1f} µs per event")


if __name__ == "__main__":
    main()
