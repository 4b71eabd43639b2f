"""``tessera catalog check | violations | quarantine | release | asyncapi``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

catalog_app = typer.Typer(help="The event catalog: check it, its violations, the quarantine.",
                          no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="tessera.yaml (default: $TESSERA_CONFIG, else the demo settings)",
    show_default=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Where the embedded bus and store live (default: $TESSERA_DATA_DIR or "
    "./.tessera)", show_default=False)]


def _run(factory: Any, config: Path | None, data: Path | None) -> Any:
    from tessera.cli import _runtime

    runtime = _runtime(config, data)

    async def main() -> Any:
        await runtime.start()
        try:
            return await factory(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


@catalog_app.command("check")
def check(config: ConfigOpt = None,
          against: Annotated[Path | None, typer.Option(
              help="A previous tessera.yaml (or catalog file or directory): refuse breaking "
                   "changes to versions already published")] = None) -> None:
    """Check the catalog: schemas valid, each new version compatible with the one before."""
    from tessera.cli import _config

    cfg = _config(config)  # loading checks schemas and the order of versions
    if cfg.catalog is None:
        console.print("no event catalog (no catalog: section, no catalog/*.yaml)")
        return
    problems: list[str] = []
    if against is not None:
        from tessera.catalog.load import evolution_problems

        problems = evolution_problems(_previous(against), cfg.catalog.events)
    for event in cfg.catalog.events:
        versions = ", ".join(f"v{v.version}" for v in event.versions) or "no schema"
        console.print(f"  {event.type} ({event.kind}, {versions})", highlight=False)
    if problems:
        for p in problems:
            err.print(f"incompatible: {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {len(cfg.catalog.events)} event type(s)")


def _previous(path: Path) -> list[Any]:
    from tessera.catalog.load import _read_file
    from tessera.catalog.model import EventType
    from tessera.config import ConfigError, load_config

    try:
        if path.is_dir():
            raw = [e for f in sorted(path.glob("*.yaml")) for e in _read_file(f, ConfigError)]
            return [EventType.model_validate(e) for e in raw]
        if path.name.endswith((".yaml", ".yml")):
            old = load_config(path)
            if old.catalog is not None:
                return old.catalog.events
            return [EventType.model_validate(e) for e in _read_file(path, ConfigError)]
    except ConfigError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    err.print(f"{path}: not a directory or a YAML file")
    raise typer.Exit(2)


@catalog_app.command("violations")
def violations(config: ConfigOpt = None, data_dir_: DataDirOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False
               ) -> None:
    """Violations by event type and reason (rejected, quarantined, allowed)."""
    from tessera.catalog.gate import gate_of

    async def summary(rt: Any) -> list[dict[str, Any]]:
        gate = gate_of(rt)
        return await asyncio.to_thread(gate.log.summary) if gate and gate.log else []

    rows = _run(summary, config, data_dir_)
    if as_json:
        console.print_json(orjson.dumps(rows).decode())
        return
    table = Table("type", "reason", "source", "outcome", "count", "last event")
    for r in rows:
        table.add_row(r["type"], r["reason"], r["source"], r["outcome"], str(r["count"]),
                      r["last_event_id"])
    console.print(table)
    console.print(f"{sum(r['count'] for r in rows)} violation(s)")


@catalog_app.command("quarantine")
def quarantine(config: ConfigOpt = None, data_dir_: DataDirOpt = None,
               type_: Annotated[str | None, typer.Option("--type", help="Only this type")] = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False
               ) -> None:
    """List quarantined events waiting for release, oldest first."""
    from tessera.catalog.gate import gate_of

    async def listing(rt: Any) -> list[dict[str, Any]]:
        gate = gate_of(rt)
        if gate is None or gate.log is None:
            return []
        return [q.as_dict() for q in await asyncio.to_thread(gate.log.quarantined, type_)]

    rows = _run(listing, config, data_dir_)
    if as_json:
        console.print_json(orjson.dumps(rows).decode())
        return
    table = Table("id", "type", "source", "problem")
    for r in rows:
        first = r["problems"][0] if r["problems"] else {"pointer": "", "reason": ""}
        table.add_row(r["id"], r["type"], r["source"], f"{first['pointer']}: {first['reason']}")
    console.print(table)
    console.print(f"{len(rows)} quarantined event(s)")


@catalog_app.command("release")
def release_cmd(
    ids: Annotated[list[str] | None, typer.Argument(help="Event ids (or uids) to release")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Every pending one of a type")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every pending quarantined event")] = False,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Validate quarantined events again (after a fix) and process the valid ones."""
    from tessera.catalog.gate import release

    if not ids and not type_ and not all_:
        err.print("give event ids, --type, or --all")
        raise typer.Exit(2)
    result = _run(lambda rt: release(rt, ids or None, type_), config, data_dir_)
    console.print(f"{len(result.released)} event(s) released")
    for uid, problems in result.still_invalid.items():
        first = problems[0]
        err.print(f"still invalid: {uid}: {first['pointer']}: {first['reason']}", markup=False,
                  soft_wrap=True)
    if result.still_invalid:
        raise typer.Exit(1)


@catalog_app.command("asyncapi")
def asyncapi(config: ConfigOpt = None,
             output: Annotated[Path | None, typer.Option("--output", "-o")] = None) -> None:
    """Print (or write) the AsyncAPI 3.0 document of the catalog."""
    from tessera.catalog.asyncapi import asyncapi_document
    from tessera.cli import _config

    cfg = _config(config)
    doc = asyncapi_document(cfg.catalog.events if cfg.catalog else [])
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    if output is not None:
        output.write_text(text + "\n")
    else:
        console.print_json(text)
