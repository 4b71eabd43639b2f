"""``tessera import FILE --source S --mapping M``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from tessera.imports.job import ImportError_, ImportJob, ImportSummary
from tessera.imports.mapping import MappingError, load_mapping

console = Console()
err = Console(stderr=True)


def build_job(runtime: Any, file: Path, source: str, mapping_path: Path, **options: Any
              ) -> ImportJob:
    try:
        mapping = load_mapping(mapping_path)
    except MappingError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    try:
        return ImportJob(
            path=file, source=source, mapping=mapping, store=runtime.store,
            processor=runtime.processor, extractor=runtime.extractor, bus=runtime.bus,
            work_dir=runtime.data_dir / "imports",
            known_sources={s.name for s in runtime.config.sources}, **options)
    except ImportError_ as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def print_summary(summary: ImportSummary, out: Console = console) -> None:
    state = "[green]done[/green]" if summary.done else "[yellow]interrupted[/yellow]"
    out.print(f"import {summary.import_id} {state}: {summary.file} as source {summary.source!r}")
    if summary.resumed_from_line:
        out.print(f"  resumed after line {summary.resumed_from_line}")
    out.print(f"  rows read     {summary.rows:>12,}")
    out.print(f"  imported      {summary.imported:>12,}  ({summary.mode})")
    out.print(f"  duplicates    {summary.duplicates:>12,}")
    out.print(f"  rejected      {summary.rejected:>12,}"
              + (f"  -> {summary.rejects_file}" if summary.rejected else ""))
    if summary.mode == "direct":
        out.print(f"  new profiles  {summary.profiles_created:>12,}")
        out.print(f"  merges        {summary.merges:>12,}")
    out.print(f"  time          {summary.seconds:>12.1f} s  "
              f"({summary.rows_per_second:,.0f} rows/s)")
    if not summary.done:
        out.print("  run the same command again to resume")


def import_command(
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file", exists=True,
                                         dir_okay=False)],
    source: Annotated[str, typer.Option("--source", "-s", help="The source the rows come from "
                                        "(its survivorship priority applies)")],
    mapping: Annotated[Path, typer.Option("--mapping", "-m", help="Mapping YAML: columns to "
                                          "identifiers, traits, event fields", exists=True)],
    format_: Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet "
                                                "(default: from the suffix)")] = None,
    mode: Annotated[str, typer.Option(help="direct: apply here in large batches; bus: "
                                      "append to the event log for the worker")] = "direct",
    log: Annotated[bool, typer.Option("--log/--no-log", help="direct mode: also append the "
                                      "events to the log, so a rebuild re-derives them")] = True,
    bulk: Annotated[bool, typer.Option("--bulk/--no-bulk", help="direct mode: create new "
                                       "people set-based (same result; --no-bulk applies "
                                       "every row through the processor)")] = True,
    columnar: Annotated[bool, typer.Option("--columnar/--no-columnar", help="direct mode, "
                                           "CSV profiles: keep rows as columns to the store "
                                           "(same result; --no-columnar: the bulk "
                                           "path)")] = True,
    read_ahead: Annotated[bool | None, typer.Option(
        "--read-ahead/--no-read-ahead", help="columnar path: read, map and pack chunks in "
        "a process of their own (default: for files of 8 MiB and more)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 5000,
    rejects: Annotated[Path | None, typer.Option(help="Where rejected rows go (JSONL; default "
                                                 "in the data directory)")] = None,
    restart: Annotated[bool, typer.Option(help="Ignore a checkpoint and start over "
                                          "(already applied rows are still skipped)")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    data_dir_: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Import profile records or events from a file, streaming and resumable.

    Rows go through the same identity resolution and survivorship as real-time
    events. An interrupted import (Ctrl-C, a crash) resumes where it stopped
    when run again; rows that cannot be imported are written, with their line
    and the reason, to the rejects file.
    """
    from tessera.cli import _runtime

    if mode not in ("direct", "bus"):
        err.print("--mode must be direct or bus")
        raise typer.Exit(2)
    runtime = _runtime(config, data_dir_)
    job = build_job(runtime, file, source, mapping, fmt=format_, mode=mode,
                    batch_size=batch_size, rejects_path=rejects, restart=restart,
                    log_events=log, bulk=bulk, columnar=columnar, read_ahead=read_ahead)

    async def main() -> ImportSummary:
        await runtime.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if not progress:
                return await job.run(stop=stop)
            unit = DownloadColumn() if job.format != "parquet" else TextColumn(
                "{task.completed:,.0f}/{task.total:,.0f} rows")
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), unit,
                          TimeRemainingColumn(), console=err, transient=False) as bar:
                task = bar.add_task(f"import {file.name}", total=None)

                def on_progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                return await job.run(progress=on_progress, stop=stop)
        finally:
            await runtime.close()

    try:
        summary = asyncio.run(main())
    except ImportError_ as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    print_summary(summary)
    raise typer.Exit(0 if summary.done else 130)
