"""Cost of strict JSON parsing (``tessera.api.body.parse_json``) over plain ``orjson.loads``.

Strict parsing refuses duplicate keys, nesting past 64 levels, numbers of
magnitude 2^63 or more, NaN/Infinity and invalid UTF-8 (see docs/privacy.md).
This measures what those checks add on top of orjson for a Segment ``/v1/batch``
body of the synthetic stream of ``bench/processor.py`` (about 225 KB by
default), and for a body of many small numbers (the worst case of the walk).
Best of ``--repeat`` runs, in this process, no HTTP.

    .venv/bin/python bench/strict_json.py
    .venv/bin/python bench/strict_json.py --profile   # pyinstrument of parse_json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson
from benchlib import event_stream, machine_line, population

from tessera.api.body import parse_json


def segment_batch(target_bytes: int) -> bytes:
    msgs = [m.body for m in event_stream(population(2_000, 7), 30_000, 8)
            if m.kind == "segment"]
    batch: list[object] = []
    size = 12
    for msg in msgs:
        size += len(orjson.dumps(msg)) + 1
        if size > target_bytes:
            break
        batch.append(msg)
    return orjson.dumps({"batch": batch})


def numbers_body(target_bytes: int) -> bytes:
    rows = [{"id": n, "values": [n * 0.5, n, -n, n * 1000]} for n in range(target_bytes // 48)]
    return orjson.dumps({"rows": rows})


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=225_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    for name, body in (("segment batch", segment_batch(args.bytes)),
                       ("numbers", numbers_body(args.bytes))):
        plain = best_ms(lambda body=body: orjson.loads(body), args.repeat)  # type: ignore[misc]
        strict = best_ms(lambda body=body: parse_json(body), args.repeat)  # type: ignore[misc]
        print(f"  {name:<14} {len(body) / 1000:6.0f} KB   orjson {plain:6.2f} ms   "
              f"parse_json {strict:6.2f} ms   strict checks add {strict - plain:5.2f} ms")
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0001)
            profiler.start()
            for _ in range(args.repeat):
                parse_json(body)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
