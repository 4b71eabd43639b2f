"""CPU time of one next-best-action decision without HTTP, in this process.

Members (``pzlib.member_events``) are loaded through the real profiles
processor and personalization engine into a fresh embedded data directory;
then ``Personalization.decide`` (what the endpoint calls after
authentication: the profile, its aggregates, memberships and offer history
read from the store and the state, and the four stages over the demo's
actions catalog) runs once for every member, twice, and the second pass is
timed in CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine_line
from pzlib import member_number
from segment_batch import load

from tessera.config import default_config
from tessera.personalization.engine import Personalizer
from tessera.personalization.queries import Personalization
from tessera.personalization.state.sqlite import SQLiteState
from tessera.runtime import Runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tessera-decide-"))
    config = default_config()

    async def run() -> tuple[float, float, int]:
        runtime = Runtime(config, base / "data")
        await runtime.start()
        state = SQLiteState(base / "data" / "personalization.db")
        try:
            load(runtime, Personalizer(config.personalization, runtime.store, state),
                 args.members, 7)
            p = Personalization.load(config.personalization, runtime.store, state)
            pids = [runtime.store.resolve(f"member_number:{member_number(i)}")
                    for i in range(args.members)]
            offered = 0
            for pid in pids:
                assert pid is not None
                p.decide(pid, "contact_center", 3)
            cpu, wall = time.process_time(), time.perf_counter()
            for pid in pids:
                assert pid is not None
                offered += bool(p.decide(pid, "contact_center", 3).chosen)
            return time.process_time() - cpu, time.perf_counter() - wall, offered
        finally:
            state.close()
            await runtime.close()

    try:
        cpu, wall, offered = asyncio.run(run())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"nba_decide_cpu: {machine_line()}")
    print(f"  {args.members:,} decisions ({offered:,} offered an action): "
          f"{cpu / args.members * 1000:.3f} ms CPU, {wall / args.members * 1000:.3f} ms wall "
          f"each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
