"""``tessera traits`` and ``tessera segments``: computed traits and audiences from the shell."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

traits_app = typer.Typer(help="Computed traits: show, rebuild from the timelines.",
                         no_args_is_help=True)
segments_app = typer.Typer(help="Audiences: sizes, members, batch evaluation.",
                           no_args_is_help=True)

audiences_app = typer.Typer(
    help="Audiences saved beside the configured ones: list, save, delete (the running "
         "workers pick them up within seconds).", no_args_is_help=True)

APPS = {"traits": traits_app, "segments": segments_app, "audiences": audiences_app}

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="tessera.yaml (default: $TESSERA_CONFIG, else the demo settings)",
    show_default=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Where the embedded bus and store live (default: $TESSERA_DATA_DIR or "
    "./.tessera)", show_default=False)]


def _with_engine(config: Path | None, data: Path | None, job: Any) -> Any:
    """Run ``job(runtime, personalizer)`` with the state open, relaying its outbox after."""
    from tessera.cli import _runtime
    from tessera.personalization.audiences import usable
    from tessera.personalization.engine import Personalizer
    from tessera.personalization.service import PersonalizationService
    from tessera.personalization.state import open_state

    runtime = _runtime(config, data)

    async def main() -> Any:
        await runtime.start()
        state = open_state(runtime.store_url, runtime.data_dir)
        try:
            await asyncio.to_thread(state.migrate)
            engine = Personalizer(runtime.config.personalization, runtime.store, state)
            saved = await asyncio.to_thread(state.saved_audiences)
            engine.set_audiences(usable(runtime.config.personalization, saved))
            result = await asyncio.to_thread(job, runtime, engine)
            service = PersonalizationService(runtime.config.personalization, runtime.bus,
                                             runtime.store, state)
            await service.relay()  # the segment.* events of the job
            return result
        finally:
            state.close()
            await runtime.close()

    return asyncio.run(main())


def _resolve(runtime: Any, identifier: str) -> str:
    type_, sep, value = identifier.partition(":")
    if sep:
        normalized = runtime.extractor.normalize(type_, value)
        if normalized is not None:
            identifier = f"{type_}:{normalized}"
    pid = runtime.store.resolve(identifier)
    if pid is None:
        err.print(f"no profile has the identifier {identifier!r}")
        raise typer.Exit(1)
    return str(pid)


@traits_app.command("rebuild")
def traits_rebuild(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Recompute every computed trait and the offer history from the stored timelines.

    Audiences are evaluated again; memberships that change emit segment events.
    Stop the workers first (events applied during the rebuild could count twice).
    """
    from tessera.personalization.batch import rebuild

    report = _with_engine(config, data_dir_, lambda rt, engine: rebuild(engine))
    console.print(f"rebuilt {report.profiles} profile(s) in {report.seconds:.1f}s: "
                  f"{report.entered} entered, {report.exited} exited, "
                  f"{report.dropped} stale profile(s) forgotten")


@traits_app.command("show")
def traits_show(identifier: Annotated[str, typer.Argument(help="TYPE:VALUE or a profile id")],
                config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """A profile's computed traits and segments, as JSON."""
    from tessera.cli import _runtime
    from tessera.personalization.queries import Personalization
    from tessera.personalization.state import open_state

    runtime = _runtime(config, data_dir_)
    pid = _resolve(runtime, identifier)
    p = Personalization(runtime.config.personalization, runtime.store,
                        open_state(runtime.store_url, runtime.data_dir))
    body = {"profile_id": pid, "computed_traits": p.computed_of(pid),
            "segments": p.segments_of(pid)}
    console.print_json(orjson.dumps(body).decode())


@segments_app.command("list")
def segments_list(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Audiences and their sizes."""
    from tessera.cli import _runtime
    from tessera.personalization.queries import Personalization
    from tessera.personalization.state import open_state

    runtime = _runtime(config, data_dir_)
    p = Personalization(runtime.config.personalization, runtime.store,
                        open_state(runtime.store_url, runtime.data_dir))
    table = Table("segment", "size", "description")
    sizes = p.sizes()
    for c in p.catalog():  # configured and saved
        table.add_row(c.audience.name, str(sizes.get(c.audience.name, 0)),
                      c.audience.description)
    console.print(table)


@segments_app.command("members")
def segments_members(name: Annotated[str, typer.Argument(help="The audience")],
                     limit: Annotated[int, typer.Option(help="At most this many")] = 100,
                     config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """An audience's member profile ids, one a line."""
    _, p = _personalization(config, data_dir_)
    if name not in p.audience_names:  # configured and saved
        err.print(f"no audience named {name!r}")
        raise typer.Exit(1)
    for pid, _ in p.state.members(name, None, limit):
        console.print(pid, highlight=False)


@segments_app.command("evaluate")
def segments_evaluate(
    config: ConfigOpt = None,
    data_dir_: DataDirOpt = None,
    processes: Annotated[int, typer.Option(
        min=1, max=64, help="Split the profiles over this many processes (one per core)")] = 1,
) -> None:
    """Evaluate every audience over every profile now (after a rule change, say)."""
    from tessera.personalization.batch import EngineSpec, evaluate_all

    started = time.perf_counter()
    report = _with_engine(config, data_dir_, lambda rt, engine: evaluate_all(
        engine, processes=processes, spec=EngineSpec.of(rt, engine)))
    console.print(f"evaluated {report.profiles} profile(s) in "
                  f"{time.perf_counter() - started:.1f}s: {report.entered} entered, "
                  f"{report.exited} exited")


def _personalization(config: Path | None, data: Path | None) -> Any:
    from tessera.cli import _runtime
    from tessera.personalization.queries import Personalization
    from tessera.personalization.state import open_state

    runtime = _runtime(config, data)
    return runtime, Personalization(runtime.config.personalization, runtime.store,
                                    open_state(runtime.store_url, runtime.data_dir))


@audiences_app.command("list")
def audiences_list(config: ConfigOpt = None, data_dir_: DataDirOpt = None,
                   json_: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
                   ) -> None:
    """Every audience, configured and saved: origin, size, whether it is filled in."""
    _, p = _personalization(config, data_dir_)
    sizes = p.sizes()
    rows = [c.as_dict() | {"size": sizes.get(c.audience.name, 0)} for c in p.catalog()]
    p.state.close()
    if json_:
        console.print_json(orjson.dumps(rows).decode())
        return
    table = Table("audience", "origin", "size", "evaluated", "description")
    for row in rows:
        table.add_row(row["name"], row["origin"], str(row["size"]),
                      "yes" if row["evaluated"] else "not yet", row.get("description", ""))
    console.print(table)


def _rule(text: str) -> Any:
    """A rule as JSON or YAML, inline or ``@file``."""
    import yaml

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            err.print(f"--rule: cannot read {text[1:]}: {exc.strerror}")
            raise typer.Exit(2) from None
    try:
        return yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        err.print(f"--rule: neither JSON nor YAML: {exc}")
        raise typer.Exit(2) from None


@audiences_app.command("save")
def audiences_save(
    name: Annotated[str, typer.Argument(help="The audience's name (a-z, 0-9, _ . -)")],
    rule: Annotated[str, typer.Option(
        "--rule", help="The rule, JSON or YAML, or @FILE (docs/personalization.md)")],
    description: Annotated[str, typer.Option(help="What the audience is for")] = "",
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Create or replace a saved audience (as POST /v1/audiences)."""
    from tessera.personalization import audiences

    runtime, p = _personalization(config, data_dir_)
    body = {"name": name, "description": description, "rule": _rule(rule)}
    try:
        saved, created = audiences.save(runtime.config.personalization, p.state, body)
    except audiences.AudienceRejected as exc:
        err.print(exc.message)
        for e in exc.errors:
            err.print(f"  {e.field}: {e.reason}", highlight=False)
        raise typer.Exit(1) from None
    except audiences.AudienceConflict as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    finally:
        p.state.close()
    console.print(f"{'created' if created else 'replaced'} audience {name!r}; the running "
                  "workers fill it in within seconds", highlight=False)
    console.print_json(orjson.dumps(saved.as_dict()).decode())


@audiences_app.command("delete")
def audiences_delete(name: Annotated[str, typer.Argument(help="A saved audience")],
                     config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Delete a saved audience; the running workers make its members exit (reason
    deleted)."""
    from tessera.personalization import audiences

    runtime, p = _personalization(config, data_dir_)
    try:
        audiences.delete(runtime.config.personalization, p.state, name)
    except audiences.AudienceConflict as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    except audiences.AudienceNotFound:
        err.print(f"no saved audience named {name!r}")
        raise typer.Exit(1) from None
    finally:
        p.state.close()
    console.print(f"deleted audience {name!r}; its members exit within seconds",
                  highlight=False)
