"""``tessera deliveries``, ``tessera subscriptions``, ``tessera journeys``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tessera.activation.state import ActivationState, open_activation_state
from tessera.events.envelope import iso_time

console = Console()
err = Console(stderr=True)

deliveries_app = typer.Typer(help="Delivery figures of the subscriptions.", no_args_is_help=True)
subscriptions_app = typer.Typer(help="Subscriptions: list, pause, resume.", no_args_is_help=True)
journeys_app = typer.Typer(help="Journeys and their counts per step.", no_args_is_help=True)

APPS = {"deliveries": deliveries_app, "subscriptions": subscriptions_app,
        "journeys": journeys_app}

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="tessera.yaml (default: $TESSERA_CONFIG, else the demo settings)",
    show_default=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Where the embedded bus and store live (default: $TESSERA_DATA_DIR or "
    "./.tessera)", show_default=False)]


def _overview(config: Path | None, data: Path | None, name: str | None = None
              ) -> list[dict[str, Any]]:
    from tessera.activation.service import overview
    from tessera.cli import _runtime

    runtime = _runtime(config, data)

    async def main() -> list[dict[str, Any]]:
        await runtime.bus.start()
        state = open_activation_state(runtime.store_url, runtime.data_dir)
        try:
            return await overview(runtime.config, runtime.bus, state, name)
        finally:
            state.close()
            await runtime.bus.close()

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    return iso_time(ts)[:19] + "Z" if ts else "-"


@deliveries_app.command("list")
def deliveries_list(
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Per subscription: lag, delivered, failed attempts, dead letters, last error."""
    subs = _overview(config, data_dir_)
    if json_:
        console.print_json(orjson.dumps(subs).decode())
        return
    table = Table("subscription", "origin", "status", "lag", "in flight", "delivered",
                  "failed attempts", "dead letters", "last success", "last error")
    for s in subs:
        st = s["stats"]
        status = "paused" if s["paused"] else ("new" if s["created_at"] is None else "active")
        error = st["last_error"] or ""
        if error:
            error = f"{_when(st['last_error_at'])} {error[:60]}"
        table.add_row(s["name"], s["origin"], status,
                      "-" if st["lag"] is None else str(st["lag"]), str(st["in_flight"]),
                      str(st["delivered"]), str(st["failed_attempts"]),
                      str(st["dead_letters_pending"]), _when(st["last_success_at"]), error)
    console.print(table)
    console.print(f"{len(subs)} subscription(s)")


@subscriptions_app.command("list")
def subscriptions_list(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Every subscription's definition as JSON (secrets masked)."""
    console.print_json(orjson.dumps(_overview(config, data_dir_)).decode())


def _store_url(config: Path | None) -> str | None:
    """Where the store is, as the runtime would choose it (the state lives beside it)."""
    from tessera.cli import _config

    return os.environ.get("TESSERA_STORE_URL") or _config(config).store_url


def _state(config: Path | None, data: Path | None) -> ActivationState:
    from tessera.config import data_dir

    return open_activation_state(_store_url(config), data_dir(data))


def _set_paused(name: str, paused: bool, config: Path | None, data: Path | None) -> None:
    state = _state(config, data)
    try:
        if not state.set_paused(name, paused):
            err.print(f"no subscription {name!r} has started yet (start the worker first)")
            raise typer.Exit(1)
    finally:
        state.close()
    console.print(f"subscription {name!r} {'paused' if paused else 'resumed'}")


@subscriptions_app.command("pause")
def subscriptions_pause(name: Annotated[str, typer.Argument(help="Subscription")],
                        config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Stop delivering; events wait on the bus (the lag grows) until resumed."""
    _set_paused(name, True, config, data_dir_)


@subscriptions_app.command("resume")
def subscriptions_resume(name: Annotated[str, typer.Argument(help="Subscription")],
                         config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Deliver again, starting with what waited."""
    _set_paused(name, False, config, data_dir_)


@journeys_app.command("list")
def journeys_list(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Per journey and step: entered, waiting, completed, exited."""
    from tessera.cli import _config
    from tessera.config import data_dir
    from tessera.journeys.state import open_journey_state

    cfg = _config(config)
    state = open_journey_state(_store_url(config), data_dir(data_dir_))
    try:
        metrics = {(m.journey, m.step): m for m in state.metrics()}
    finally:
        state.close()
    table = Table("journey", "step", "entered", "waiting", "completed", "exited")
    for j in cfg.journeys:
        for step in ["*", *(s.id for s in j.steps)]:
            m = metrics.get((j.name, step))
            label = "(journey)" if step == "*" else step
            table.add_row(j.name, label, *(str(getattr(m, f, 0) if m else 0)
                                           for f in ("entered", "waiting", "completed", "exited")))
    console.print(table)
