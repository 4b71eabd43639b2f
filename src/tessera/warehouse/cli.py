"""``tessera warehouse export | sql | traits``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

warehouse_app = typer.Typer(help="The DuckDB warehouse: export, query, SQL traits.",
                            no_args_is_help=True)
console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir")]
EveryOpt = Annotated[float | None, typer.Option(
    help="Repeat every this many seconds (scheduled), until Ctrl-C or --times")]
TimesOpt = Annotated[int, typer.Option(help="With --every: how many runs at most", min=1)]


def _runtime(config: Path | None, data: Path | None) -> Any:
    from tessera.cli import _runtime as build

    runtime = build(config, data)
    runtime.store.migrate()
    return runtime


def _repeat(every: float | None, times: int, step: Any) -> None:
    runs = times if every else 1
    for n in range(runs):
        step()
        if every and n + 1 < runs:
            time.sleep(every)


@warehouse_app.command("export")
def export(parquet: Annotated[bool, typer.Option("--parquet/--no-parquet")] = True,
           full: Annotated[bool, typer.Option(help="Replace every table instead of writing "
                                              "only what changed since the last export")
                           ] = False,
           overlap: Annotated[float, typer.Option(
               min=0, help="Seconds re-read before the last export's mark (late commits)")
                              ] = 60.0,
           every: EveryOpt = None, times: TimesOpt = 1_000_000,
           config: ConfigOpt = None, data_dir_: DataOpt = None) -> None:
    """Bring profiles, traits, identities, merges, events and segment memberships into
    the warehouse (and Parquet): only what changed since the last export, or --full."""
    from tessera.personalization.state import open_state
    from tessera.warehouse import Warehouse

    runtime = _runtime(config, data_dir_)
    state = open_state(runtime.store_url, runtime.data_dir)
    state.migrate()
    wh = Warehouse(runtime.data_dir)
    first = [full]

    def step() -> None:
        report = wh.export(runtime.store, parquet, memberships=state, full=first[0],
                           overlap=overlap)
        first[0] = False  # --full with --every: the first run only
        rows = ", ".join(f"{t} {n:,}" for t, n in report.rows.items())
        written = ", ".join(f"{t} {n:,}" for t, n in report.written.items() if n) or "nothing"
        console.print(f"{report.mode} export in {report.seconds:.1f} s: {rows}")
        console.print(f"  rows written: {written}")

    try:
        _repeat(every, times, step)
    finally:
        wh.close()
        state.close()


@warehouse_app.command("sql")
def sql(query: str, limit: Annotated[int, typer.Option(min=1)] = 100,
        config: ConfigOpt = None, data_dir_: DataOpt = None) -> None:
    """Run a SQL query on the warehouse (DuckDB) and print the rows."""
    import duckdb

    from tessera.warehouse import Warehouse

    wh = Warehouse(_runtime(config, data_dir_).data_dir)
    try:
        names, rows = wh.sql(query, limit)
    except duckdb.Error as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        wh.close()
    table = Table(*names)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@warehouse_app.command("traits")
def traits(spec: Annotated[Path, typer.Option(help="YAML with traits: [{name, sql, source}]",
                                              exists=True)],
           full: Annotated[bool, typer.Option(help="Write every row, not only changed ones")
                           ] = False,
           export_first: Annotated[bool, typer.Option("--export/--no-export",
                                                      help="Refresh the tables first")] = True,
           every: EveryOpt = None, times: TimesOpt = 1_000_000,
           config: ConfigOpt = None, data_dir_: DataOpt = None) -> None:
    """Compute SQL traits in DuckDB and sync the changed values back to the profiles."""
    from tessera.warehouse import Warehouse, load_trait_specs

    runtime = _runtime(config, data_dir_)
    specs = load_trait_specs(spec)
    wh = Warehouse(runtime.data_dir)

    def step() -> None:
        if export_first:
            wh.export(runtime.store, parquet=False)
        for r in wh.sync_traits(runtime.store, runtime.config, specs, full):
            console.print(f"{r.trait}: {r.rows:,} rows, {r.changed:,} changed, "
                          f"{r.written:,} written, {r.unknown_profiles:,} unknown profiles")

    try:
        _repeat(every, times, step)
    finally:
        wh.close()
