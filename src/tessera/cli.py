"""The ``tessera`` command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from tessera.config import ConfigError, TesseraConfig, data_dir, load_config

app = typer.Typer(
    help="Tessera: an event-driven, composable Customer Data Platform.",
    no_args_is_help=True,
    add_completion=False,
)
profiles_app = typer.Typer(help="Look up unified profiles.", no_args_is_help=True)
config_app = typer.Typer(help="Check configuration.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(config_app, name="config")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="tessera.yaml (default: $TESSERA_CONFIG, else the demo settings)",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the embedded bus and store live (default: $TESSERA_DATA_DIR or ./.tessera)",
        show_default=False,
    ),
]


def _config(path: Path | None) -> TesseraConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _runtime(config_path: Path | None, data: Path | None) -> Any:
    from tessera.runtime import Runtime

    return Runtime(_config(config_path), data_dir(data))


def configure_logging(level: str = "info") -> None:
    import logging

    import structlog

    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )


def _worker_command(config_path: Path | None, data: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tessera", "worker", "--data-dir", str(data)]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    return cmd


class WorkerSupervisor:
    """Runs ``tessera worker`` as a child process and restarts it if it dies."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.process is not None and self.process.poll() is not None:
                err.print(f"worker exited with {self.process.returncode}; restarting")
                self.process = subprocess.Popen(self.command)

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir_: DataDirOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    worker: Annotated[
        bool,
        typer.Option("--worker/--no-worker", help="Also run the processor (as a second process)"),
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "warning",
) -> None:
    """Serve the HTTP API (ingest, profiles), with the processor beside it."""
    import uvicorn

    from tessera.api.app import create_app
    from tessera.runtime import Runtime

    cfg = _config(config)
    data = data_dir(data_dir_)
    configure_logging(log_level)
    runtime = Runtime(cfg, data)
    supervisor = None
    if worker:
        asyncio.run(_prepare(Runtime(cfg, data)))
        supervisor = WorkerSupervisor(_worker_command(config, data))
        supervisor.start()
    console.print(
        f"Tessera {'API and worker' if worker else 'API'} on http://{host}:{port} (data in {data})"
    )
    try:
        uvicorn.run(
            create_app(runtime),
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            loop="auto",
            http="auto",
        )
    finally:
        if supervisor is not None:
            supervisor.stop()


async def _prepare(runtime: Any) -> None:
    await runtime.start()
    await runtime.close()


@app.command("worker")
def worker_cmd(
    config: ConfigOpt = None,
    data_dir_: DataDirOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the profiles processor (a consumer group of the event log)."""
    runtime = _runtime(config, data_dir_)
    configure_logging(log_level)

    async def main() -> None:
        await runtime.start()
        worker = runtime.worker()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            await runtime.close()

    asyncio.run(main())


@profiles_app.command("get")
def profiles_get(
    identifier: Annotated[
        str, typer.Argument(help="TYPE:VALUE (email:jane@example.com) or a profile id")
    ],
    config: ConfigOpt = None,
    data_dir_: DataDirOpt = None,
    events: Annotated[int, typer.Option(help="Also show this many latest events")] = 0,
) -> None:
    """Print a unified profile as JSON."""
    from tessera.api.profiles import profile_json

    runtime = _runtime(config, data_dir_)
    type_, sep, value = identifier.partition(":")
    if sep:
        normalized = runtime.extractor.normalize(type_, value)
        if normalized is not None:
            identifier = f"{type_}:{normalized}"
    pid = runtime.store.resolve(identifier)
    profile = runtime.store.get_profile(pid) if pid else None
    if profile is None:
        err.print(f"no profile has the identifier {identifier!r}")
        raise typer.Exit(1)
    body = profile_json(profile)
    if events:
        body["events"] = [e.event for e in runtime.store.timeline(pid, events)]
    console.print_json(orjson.dumps(body).decode())


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate a configuration file and summarize it."""
    cfg = _config(config)
    origin = config or os.environ.get("TESSERA_CONFIG") or "(built-in demo settings)"
    console.print(f"[green]ok[/green] {origin}")
    console.print(f"  sources: {', '.join(s.name for s in cfg.sources) or '(none)'}")
    console.print(f"  api keys: {len(cfg.api_keys)}")
    idents = ", ".join(
        f"{i.type}(limit {i.limit or 'none'}, priority {i.priority})"
        for i in sorted(cfg.all_identifiers(), key=lambda i: i.priority)
    )
    console.print(f"  identifiers: {idents}")
    console.print(f"  trait rules: {len(cfg.traits.rules)}, mappings: {len(cfg.traits.mappings)}")


@app.command()
def demo(
    people: Annotated[int, typer.Option(help="How many people to simulate")] = 5000,
    events: Annotated[int, typer.Option(help="About how many events to send")] = 50_000,
    data_dir_: DataDirOpt = None,
    port: Annotated[int, typer.Option(help="Port for the demo server")] = 8765,
    keep_serving: Annotated[
        bool, typer.Option("--serve", help="Keep the server running afterwards for exploring")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed of the simulation")] = 7,
) -> None:
    """Run the member-services demo end to end through the real HTTP API."""
    from tessera.demo.run import run_demo

    code = run_demo(
        people=people,
        events=events,
        data=data_dir(data_dir_),
        port=port,
        keep_serving=keep_serving,
        seed=seed,
        console=console,
    )
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
