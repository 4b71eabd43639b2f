"""Batch evaluation of 50 audiences over 100,000 profiles (target: at most 60 s).

A fresh embedded data directory (SQLite store, SQLite personalization state)
is filled in this process: the members' events (``pzlib.member_events``, about
five a member) go through the real profiles processor
(``ProfileProcessor.apply``) and then through the personalization engine with
its audiences switched off, so that every profile has its traits and computed
traits (windowed counts and sums, the implicit event-history counts) but no
membership yet. The loading is not measured.

Measured: ``evaluate_all`` with the demo's five audiences plus 45 generated
ones (thresholds on computed traits, tiers, identifiers, consent, event
history, references to other audiences), the job ``tessera segments evaluate``
runs: every profile read, every audience evaluated, every membership written
and every ``segment.entered`` event queued. A second run over unchanged
profiles is measured too (reads and evaluation only).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine_line, verdict
from pzlib import member_events

from tessera.config import default_config, parse_config
from tessera.events.envelope import Event, parse_time
from tessera.personalization.batch import EngineSpec, evaluate_all
from tessera.personalization.engine import Personalizer
from tessera.personalization.state.sqlite import SQLiteState
from tessera.runtime import Runtime

TARGET_SECONDS = 60.0


def cpu_time() -> float:
    """CPU seconds of this process and of the evaluation processes it waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def audiences(total: int) -> list[dict[str, Any]]:
    """The demo's audiences and generated ones, ``total`` in all."""
    base = default_config().personalization.model_dump(mode="json", by_alias=True,
                                                      exclude_none=True)["audiences"]
    out = list(base)
    kinds = [
        lambda i: {"path": "computed.roadside_tows_12m", "gte": 1 + i % 3},
        lambda i: {"path": "computed.roadside_calls_90d", "gte": 1 + i % 2},
        lambda i: {"path": "computed.lifetime_travel_spend", "gte": 500 * (1 + i % 6)},
        lambda i: {"path": "traits.membership_tier", "eq": ("classic", "plus", "premier")[i % 3]},
        lambda i: {"all": [{"consent": "marketing_email"},
                           {"path": "computed.travel_bookings_180d", "gte": 1 + i % 2}]},
        lambda i: {"event": {"type": "com.example.roadservice.ticket.created",
                             "within": f"{30 * (1 + i % 4)}d", "min": 1}},
        lambda i: {"all": [{"audience": "members"},
                           {"any": [{"audience": "frequent_tows"},
                                    {"path": "computed.favourite_destination",
                                     "eq": ("Rome", "Oslo", "Lima")[i % 3]}]}]},
        lambda i: {"not": {"path": "identifiers.email", "exists": True}},
        lambda i: {"all": [{"path": "traits.membership_tier", "in": ["plus", "premier"]},
                           {"path": "computed.last_channel", "exists": False},
                           {"consent": "marketing_email"}]},
    ]
    i = 0
    while len(out) < total:
        out.append({"name": f"generated_{i:02d}", "rule": kinds[i % len(kinds)](i)})
        i += 1
    return out


def config_with(total: int) -> Any:
    raw = default_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw["personalization"]["audiences"] = audiences(total)
    return parse_config(raw)


def events_of(runtime: Runtime, members: range, seed: int, now: float) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in members:
        for o in member_events(i, rng, now):
            b = o.body
            out.append(Event(id=b["id"], source=b["source"], type=b["type"],
                             time=parse_time(b["time"]), received_at=now, source_name=o.source,
                             data=b["data"],
                             identifiers=runtime.extractor.extract({"data": b["data"]})))
    return out


def load(runtime: Runtime, engine: Personalizer, people: int, seed: int) -> int:
    """Profiles and computed traits for ``people`` members; returns the events applied."""
    now = time.time()
    total = 0
    chunk = 2000
    for start in range(0, people, chunk):
        events = events_of(runtime, range(start, min(start + chunk, people)), seed + start, now)
        runtime.processor.apply(events)
        pids: dict[str, str | None] = {}
        pairs = []
        for e in events:
            number = e.data["member_number"]
            if number not in pids:
                pids[number] = runtime.store.resolve(f"member_number:{number}")
            pairs.append((e, pids[number]))
        engine.apply(pairs)
        total += len(events)
        if (start // chunk) % 10 == 9:
            print(f"  loaded {start + chunk:,} members", file=sys.stderr)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--audiences", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", help="data directory to use (default: a temp dir)")
    parser.add_argument("--processes", type=int, default=1,
                        help="split the evaluation over this many processes")
    args = parser.parse_args(argv)
    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tessera-pz-"))
    config = config_with(args.audiences)
    print(f"segment_batch: {machine_line()} (before loading)")

    async def run() -> tuple[int, Any, Any, int]:
        runtime = Runtime(config, base / "data")
        await runtime.start()
        state = SQLiteState(base / "data" / "personalization.db")
        try:
            loader = Personalizer(config.personalization, runtime.store, state)
            loader.audiences, loader.rules = [], []  # traits only: memberships are measured
            started = time.perf_counter()
            n = load(runtime, loader, args.people, args.seed)
            print(f"  loaded {n:,} events of {args.people:,} members in "
                  f"{time.perf_counter() - started:.0f} s")
            engine = Personalizer(config.personalization, runtime.store, state)
            spec = EngineSpec.of(runtime, engine)
            cpu = cpu_time()
            first = evaluate_all(engine, processes=args.processes, spec=spec)
            first_cpu = cpu_time() - cpu
            cpu = cpu_time()
            second = evaluate_all(engine, processes=args.processes, spec=spec)
            second_cpu = cpu_time() - cpu
            return n, (first, first_cpu), (second, second_cpu), len(engine.audiences)
        finally:
            state.close()
            await runtime.close()

    try:
        _, (first, first_cpu), (second, second_cpu), count = asyncio.run(run())
    finally:
        if not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"  measured at: {machine_line()}")
    print(f"  processes: {args.processes}")
    print(f"  first evaluation of {count} audiences over {first.profiles:,} profiles: "
          f"{first.seconds:.1f} s ({first.profiles / first.seconds:,.0f} profiles/s), "
          f"{first_cpu:.1f} CPU s, {first.entered:,} entries")
    print(f"  again, nothing changed: {second.seconds:.1f} s, {second_cpu:.1f} CPU s, "
          f"{second.entered} entries, {second.exited} exits")
    print(f"  target: {count} audiences over {first.profiles:,} profiles in at most "
          f"{TARGET_SECONDS:.0f} s: {verdict(first.seconds, TARGET_SECONDS, False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
