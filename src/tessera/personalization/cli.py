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

APPS = {"traits": traits_app, "segments": segments_app}

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
    for audience in runtime.config.personalization.audiences:
        table.add_row(audience.name, str(p.sizes().get(audience.name, 0)), audience.description)
    console.print(table)


@segments_app.command("members")
def segments_members(name: Annotated[str, typer.Argument(help="The audience")],
                     limit: Annotated[int, typer.Option(help="At most this many")] = 100,
                     config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """An audience's member profile ids, one a line."""
    from tessera.cli import _runtime
    from tessera.personalization.state import open_state

    runtime = _runtime(config, data_dir_)
    if name not in {a.name for a in runtime.config.personalization.audiences}:
        err.print(f"no audience named {name!r}")
        raise typer.Exit(1)
    for pid, _ in open_state(runtime.store_url, runtime.data_dir).members(name, None, limit):
        console.print(pid, highlight=False)


@segments_app.command("evaluate")
def segments_evaluate(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Evaluate every audience over every profile now (after a rule change, say)."""
    from tessera.personalization.batch import evaluate_all

    started = time.perf_counter()
    report = _with_engine(config, data_dir_, lambda rt, engine: evaluate_all(engine))
    console.print(f"evaluated {report.profiles} profile(s) in "
                  f"{time.perf_counter() - started:.1f}s: {report.entered} entered, "
                  f"{report.exited} exited")
