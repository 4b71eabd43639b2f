"""Batch import throughput and memory: rows/s and peak RSS growth while streaming a file.

    python bench/import_rows.py --rows 1000000 --no-log          # the columnar path
    python bench/import_rows.py --rows 1000000 --no-log --no-columnar   # bulk, per event
    python bench/import_rows.py --rows 200000 --mode bus
    python bench/import_rows.py --rows 1000000 --no-log --random-emails

Generates a CSV of profile records (email, member number, four traits),
imports it into a fresh embedded default (SQLite store and log) and prints
rows/s, the CPU seconds of the process (all threads) and of the import's reading
process (``tessera.imports.ahead``, files of 8 MiB and more), the peak RSS growth
of this process over the import (sampled every 50 ms), with the load average
before and after. A flat RSS growth across file sizes is the streaming claim.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import psutil

from tessera.config import default_config
from tessera.imports.job import ImportJob
from tessera.imports.mapping import parse_mapping
from tessera.runtime import Runtime

MAPPING = {
    "identifiers": {"email": "Email", "member_number": "MemberNo"},
    "traits": {"first_name": "FirstName", "last_name": "LastName", "city": "City",
               "lifetime_value": "LTV"},
    "types": {"lifetime_value": "float"},
}


def generate(path: Path, rows: int, random_emails: bool = False) -> None:
    """``random_emails``: addresses in no order (12 hex digits of a hash of the row), as
    real files have them, instead of ``user<i>@``, which the identities index takes
    nearly in order."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Email", "MemberNo", "FirstName", "LastName", "City", "LTV"])
        for i in range(rows):
            local = (hashlib.blake2b(str(i).encode(), digest_size=6).hexdigest()
                     if random_emails else f"user{i}")
            writer.writerow([f"{local}@example.com", f"M{i:09d}", "ann", "smith", "oslo",
                             f"{i % 1000}.5"])


def children_cpu() -> float:
    """CPU seconds of this process's ended children (the import's reading process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def disk_writes() -> int:
    """Bytes this process caused to be written to storage so far (Linux), else -1."""
    try:
        with open("/proc/self/io") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("write_bytes"))
    except (OSError, StopIteration):
        return -1


class PeakRss:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("TESSERA_SQLITE_SYNCHRONOUS", "NORMAL")
    with tempfile.TemporaryDirectory(prefix="tessera-import-") as tmp:
        file = Path(tmp) / "rows.csv"
        generate(file, args.rows, args.random_emails)
        runtime = Runtime(default_config(), Path(tmp) / "data")
        await runtime.start()
        try:
            job = ImportJob(path=file, source="crm", mapping=parse_mapping(MAPPING),
                            store=runtime.store, processor=runtime.processor,
                            extractor=runtime.extractor, bus=runtime.bus,
                            work_dir=Path(tmp) / "data" / "imports", mode=args.mode,
                            log_events=args.log, batch_size=args.batch_size,
                            columnar=args.columnar, read_ahead=args.read_ahead)
            path = ("columnar" if job.columnar is not None else
                    "bulk" if job.bulk is not None and args.mode == "direct" else "per event")
            load_before = os.getloadavg()
            written = disk_writes()
            with PeakRss() as rss:
                started, cpu = time.perf_counter(), time.process_time()
                child_cpu = children_cpu()
                summary = await job.run()
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                child_cpu = children_cpu() - child_cpu
            after = disk_writes()
            written = after - written if min(after, written) >= 0 else -1
        finally:
            await runtime.close()
        size = file.stat().st_size
    print(f"{args.rows:,} rows ({size / 1e6:.0f} MB CSV"
          f"{', random e-mail addresses' if args.random_emails else ''}), mode {args.mode}"
          f"{' + log' if args.log and args.mode == 'direct' else ''}, {path} path, "
          f"batch {args.batch_size}, load average {load_before[0]:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after (1 min) on {os.cpu_count()} CPUs")
    print(f"imported {summary.imported:,} in {elapsed:.1f} s: {summary.rows / elapsed:,.0f} rows/s;"
          f" peak RSS growth {(rss.peak - rss.start) / 2**20:.0f} MiB")
    total_cpu = cpu + child_cpu
    print(f"CPU time {total_cpu:.1f} s: {summary.rows / total_cpu:,.0f} rows per CPU-second, "
          f"{total_cpu / summary.rows * 1e6:.1f} us per row (this process {cpu:.1f} s, the "
          f"import's reading process {child_cpu:.1f} s; the wall figure is lower whenever "
          f"other processes share the CPUs)")
    if job.columnar is not None:
        print(f"chunks written as packed by the reading process: {job.columnar.packed}")
    if written >= 0:
        print(f"written to disk during the import: {written / 1e9:.2f} GB "
              f"({written / summary.rows / 1e3:.1f} KB per row: WAL and checkpoints)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=["direct", "bus"], default="direct")
    parser.add_argument("--log", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--columnar", action=argparse.BooleanOptionalAction, default=True,
                        help="the columnar path where it applies (direct, no log, CSV)")
    parser.add_argument("--read-ahead", action=argparse.BooleanOptionalAction, default=None,
                        help="read, map and pack chunks in a process of their own "
                             "(default: for files of 8 MiB and more)")
    parser.add_argument("--random-emails", action="store_true",
                        help="e-mail addresses in no order (as in real files)")
    asyncio.run(main(parser.parse_args()))
