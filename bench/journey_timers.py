"""Journey timers fired per second, by one engine or several engines on one state.

``--timers`` profiles each wait in a journey whose timer is due; then
``--engines`` journey engines (threads, each with its own state handle, as
activation workers on several hosts would have) fire them through the
engine's own timer path (claim, take the profile, run the next steps: an
``emit`` action and the end of the journey). Prints the timers fired per
second and checks that each fired exactly once. ``--backend postgres`` uses a
fresh schema on ``--postgres`` (dropped afterwards); ``sqlite`` uses
``activation.db`` in a temporary directory.

    .venv/bin/python bench/journey_timers.py --backend postgres --engines 2 [--timers 5000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from benchlib import machine_line
from psycopg import sql

from tessera.bus import open_bus
from tessera.config import default_config, parse_config
from tessera.journeys.engine import JourneyEngine
from tessera.journeys.state import Instance, JourneyState, open_journey_state
from tessera.store.sqlite import SQLiteStore

JOURNEY = {"name": "bench", "trigger": {"types": ["bench.start"]}, "steps": [
    {"id": "wait", "wait": {"for": "1s"}},
    {"id": "done", "action": {"emit": {"type": "bench.done", "data": {"n": 1}}}}]}


def seed(state: JourneyState, timers: int) -> None:
    with state.transaction() as tx:
        for n in range(timers):
            iid = f"i{n}"
            tx.insert(Instance(id=iid, journey="bench", profile_id=f"p{n}", slot=f"p{n}",
                               step="wait", waiting="timer", entered_at=0.0, updated_at=0.0))
            tx.set_timer(iid, "wait", 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--timers", type=int, default=5000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    url = f"{args.postgres}?schema={schema}" if args.backend == "postgres" else None
    cfg = parse_config({**default_config().model_dump(mode="json", by_alias=True,
                                                       exclude_unset=True), "journeys": [JOURNEY]})
    store = SQLiteStore(tmp / "store.db")
    store.migrate()
    bus = open_bus(None, tmp)
    states = [open_journey_state(url, tmp) for _ in range(args.engines)]
    try:
        states[0].migrate()
        seed(states[0], args.timers)
        engines = [JourneyEngine(cfg.journeys, bus, store, s, clock=lambda: 10.0)
                   for s in states]
        fired = [0] * args.engines

        def run(n: int) -> None:
            engine = engines[n]
            while engine.state.due_timers(10.0, 1):
                fired[n] += engine._fire(10.0)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(args.engines)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        queued = len(states[0].pending_outbox(args.timers * 2))
        print(machine_line())
        print(f"backend={args.backend} engines={args.engines} timers={args.timers}")
        print(f"fired={sum(fired)} per engine={fired} events queued={queued}")
        print(f"elapsed={elapsed:.2f}s  timers/s={sum(fired) / elapsed:,.0f}")
        if sum(fired) != args.timers or queued != args.timers:
            raise SystemExit("FAILED: a timer fired twice or not at all")
    finally:
        for s in states:
            s.close()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if url:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))


if __name__ == "__main__":
    main()
