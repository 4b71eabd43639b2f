"""The ``tessera`` command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from tessera.config import ConfigError, TesseraConfig, data_dir, load_config

T = TypeVar("T")

app = typer.Typer(
    help="Tessera: an event-driven, composable Customer Data Platform.",
    no_args_is_help=True,
    add_completion=False,
)
profiles_app = typer.Typer(help="Look up unified profiles.", no_args_is_help=True)
config_app = typer.Typer(help="Check configuration.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: events a processor gave up on, with the error.",
                      no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(config_app, name="config")
app.add_typer(dlq_app, name="dlq")
from tessera.activation.cli import APPS as _ACTIVATION_APPS  # noqa: E402

for _name, _sub_app in _ACTIVATION_APPS.items():
    app.add_typer(_sub_app, name=_name)
from tessera.catalog.cli import catalog_app as _catalog_app  # noqa: E402

app.add_typer(_catalog_app, name="catalog")
from tessera.relay.cli import relay_app as _relay_app  # noqa: E402

app.add_typer(_relay_app, name="relay")
from tessera.personalization.cli import APPS as _PERSONALIZATION_APPS  # noqa: E402

for _name, _sub_app in _PERSONALIZATION_APPS.items():
    app.add_typer(_sub_app, name=_name)
from tessera.privacy.cli import audit_app as _audit_app  # noqa: E402
from tessera.privacy.cli import keys_app as _keys_app  # noqa: E402
from tessera.privacy.cli import privacy_app as _privacy_app  # noqa: E402

app.add_typer(_keys_app, name="keys")
app.add_typer(_privacy_app, name="privacy")
app.add_typer(_audit_app, name="audit")

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
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _runtime(config_path: Path | None, data: Path | None) -> Any:
    return _build_runtime(_config(config_path), data_dir(data))


def _build_runtime(cfg: TesseraConfig, data: Path) -> Any:
    """A Runtime, or a clean exit naming the problem (an encryption key missing or wrong)."""
    from tessera.runtime import Runtime

    try:
        return Runtime(cfg, data)
    except ConfigError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def configure_logging(level: str = "info") -> None:
    import logging

    import structlog

    from tessera.privacy.masking import mask_pii

    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_pii,  # no personal data in logs (tessera.privacy.masking)
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )


#: what ``tessera worker`` can run; ``tessera serve`` runs each in a process of its own
PROCESSORS = ("profiles", "activation", "personalization")


def _worker_command(
    config_path: Path | None, data: Path, processors: str | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "tessera", "worker", "--data-dir", str(data)]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    if processors is not None:
        cmd += ["--processors", processors]
    return cmd


def _processors(value: str) -> tuple[str, ...]:
    """``--processors``: ``all`` or a comma-separated subset of :data:`PROCESSORS`."""
    if value.strip() == "all":
        return PROCESSORS
    chosen = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in chosen if v not in PROCESSORS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown processor {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(PROCESSORS)} or all", param_hint="--processors")
    return chosen


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class WorkerSupervisor:
    """Runs ``tessera worker`` as a child process and restarts it if it dies."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.process is not None and self.process.poll() is not None:
                err.print(f"worker exited with {self.process.returncode}; restarting")
                self.process = self._spawn()

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
    api_processes: Annotated[
        int,
        typer.Option("--api-processes", min=1, max=64,
                     help="API processes sharing the port (one per core the API may use)"),
    ] = 1,
) -> None:
    """Serve the HTTP API (ingest, profiles), with the processor beside it."""
    from tessera.observability import multiprocess

    multiprocess.enable(data_dir(data_dir_))  # before any metric exists: /metrics sums both
    import uvicorn

    from tessera.api import served
    from tessera.api.app import create_app
    from tessera.runtime import Runtime

    cfg = _config(config)
    data = data_dir(data_dir_)
    configure_logging(log_level)
    runtime = _build_runtime(cfg, data)
    supervisors: list[WorkerSupervisor] = []
    if worker:
        asyncio.run(_prepare(Runtime(cfg, data)))
        # one process per processor: each has a core (and a GIL) of its own, so webhook
        # delivery never competes with identity resolution for the same interpreter
        supervisors = [WorkerSupervisor(_worker_command(config, data, name))
                       for name in PROCESSORS]
        for one in supervisors:
            one.start()
    console.print(
        f"Tessera {'API and worker' if worker else 'API'} on http://{host}:{port} (data in {data})"
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to this handler,
    # which unwinds through `finally` so that the worker is stopped too
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        target: Any
        spread: dict[str, Any] = {}
        if api_processes == 1:
            target = create_app(runtime)
        else:
            # each process builds its own app and runtime from these (uvicorn spawns them)
            os.environ[served.CONFIG_ENV] = str(config) if config is not None else ""
            os.environ[served.DATA_DIR_ENV] = str(data)
            os.environ[served.LOG_LEVEL_ENV] = log_level
            target = f"{served.__name__}:app"
            spread = {"factory": True, "workers": api_processes}
        uvicorn.run(target, host=host, port=port, log_level=log_level, access_log=False,
                    loop="auto", http="auto", **spread)
    finally:
        for one in supervisors:
            one.stop()


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived process's loop on uvloop where it is installed (as ``serve``'s
    uvicorn does): webhook delivery measured about a tenth less CPU per request."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Windows
        return asyncio.run(main)
    return uvloop.run(main)


async def _prepare(runtime: Any) -> None:
    await runtime.start()
    await runtime.close()


@app.command("worker")
def worker_cmd(
    config: ConfigOpt = None,
    data_dir_: DataDirOpt = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-n", min=1, help="How many worker processes to run")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics")] = None,
    processors: Annotated[str, typer.Option(
        help="Which processors to run: all, or a comma-separated list of "
             + ", ".join(PROCESSORS))] = "all",
) -> None:
    """Run the processors: profiles (identity and traits), activation (subscriptions
    and journeys) and personalization, each its own consumer groups of the event log.

    With --processors, a process runs only some of them, so that each can get a
    core of its own (`tessera serve` runs one process per processor).

    With --concurrency N, N worker processes share the consumer group; each is
    restarted if it dies. Scaling past one worker needs the NATS bus (the
    embedded log serves one consumer per group at a time).
    """
    chosen = _processors(processors)
    if concurrency > 1:
        cmd = [*_worker_command(config, data_dir(data_dir_), ",".join(chosen)),
               "--log-level", log_level]
        supervisors = [WorkerSupervisor(cmd) for _ in range(concurrency)]
        for sup in supervisors:
            sup.start()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        for sup in supervisors:
            sup.stop()
        return
    runtime = _runtime(config, data_dir_)
    configure_logging(log_level)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")

    async def main() -> None:
        from tessera.activation.service import ActivationService
        from tessera.personalization.service import PersonalizationService

        await runtime.start()
        running: list[Any] = []
        if "profiles" in chosen:
            running.append(runtime.worker())
        if "activation" in chosen:  # subscriptions and journeys
            running.append(ActivationService.from_runtime(runtime))
        if "personalization" in chosen:
            # computed traits, audiences, offer outcomes (idle when none are configured)
            running.append(PersonalizationService.from_runtime(runtime))
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def stop() -> None:  # one handler per signal: a second one would replace the first
            stopping.set()
            for one in running:
                one.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            # a processor with nothing configured returns at once; the process stays up
            # until it is told to stop (else its supervisor restarts it over and over)
            await asyncio.gather(*(one.run() for one in running), stopping.wait())
        finally:
            await runtime.close()

    run_event_loop(main())


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
    pz = cfg.personalization
    if pz.enabled:
        console.print(f"  personalization: {len(pz.computed_traits)} computed traits, "
                      f"{len(pz.audiences)} audiences, {len(pz.actions)} actions")


@app.command()
def migrate(config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Create or upgrade the store's schema (also done at every start)."""
    runtime = _runtime(config, data_dir_)
    runtime.store.migrate()
    console.print(f"[green]ok[/green] store schema is up to date ({runtime.store_url or 'sqlite'})")
    from tessera.activation.state import migrate_beside_store

    migrate_beside_store(runtime.store_url, runtime.data_dir)
    console.print("[green]ok[/green] activation and journey state are up to date")


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at the time of each line, not at setup."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


def _run(coro_factory: Any, config: Path | None, data: Path | None) -> Any:
    import structlog

    # the backends' log lines go to stderr: stdout is the command's answer (JSON for `dlq show`)
    structlog.configure(logger_factory=_stderr_logger)
    runtime = _runtime(config, data)

    async def main() -> Any:
        await runtime.start()
        try:
            return await coro_factory(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


GroupOpt = Annotated[str | None, typer.Option("--group", "-g", help="Consumer group")]


@dlq_app.command("list")
def dlq_list(group: GroupOpt = None, all_: Annotated[bool, typer.Option(
        "--all", help="Include dead letters already replayed")] = False,
             config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """List dead letters, oldest first."""
    from rich.table import Table

    letters = _run(lambda rt: rt.bus.dead_letters(group, include_replayed=all_), config,
                   data_dir_)
    table = Table("id", "group", "topic", "message id", "attempts", "failed at", "error")
    from tessera.events.envelope import iso_time

    for d in letters:
        table.add_row(str(d.id), d.group, d.topic, d.message_id, str(d.attempts),
                      iso_time(d.failed_at), d.error.splitlines()[-1][:80])
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(letter_id: Annotated[int, typer.Argument(help="Dead letter id")],
             config: ConfigOpt = None, data_dir_: DataDirOpt = None) -> None:
    """Show one dead letter: its error and the whole message."""
    letters = _run(lambda rt: rt.bus.dead_letters(None, include_replayed=True), config,
                   data_dir_)
    found = next((d for d in letters if d.id == letter_id), None)
    if found is None:
        err.print(f"no dead letter {letter_id}")
        raise typer.Exit(1)
    try:
        message: Any = orjson.loads(found.payload)
    except orjson.JSONDecodeError:
        message = found.payload.decode("utf-8", "replace")
    body = {"id": found.id, "group": found.group, "topic": found.topic, "seq": found.seq,
            "message_id": found.message_id, "attempts": found.attempts,
            "failed_at": found.failed_at, "replayed_at": found.replayed_at,
            "error": found.error, "message": message}
    console.print_json(orjson.dumps(body).decode())


@dlq_app.command("replay")
def dlq_replay(
    letter_ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids")] = None,
    group: GroupOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every pending dead letter "
                                       "(of --group if given)")] = False,
    subscription: Annotated[str | None, typer.Option(
        "--subscription", "-s", help="Every pending dead letter of this subscription")] = None,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Deliver dead letters again to the group that failed them (after a fix)."""
    if subscription is not None:
        group, all_ = f"sub:{subscription}", True
    if not letter_ids and not all_:
        err.print("give dead letter ids, or --all")
        raise typer.Exit(2)

    async def replay(rt: Any) -> tuple[int, list[int]]:
        ids = list(letter_ids or [])
        if all_:
            ids += [d.id for d in await rt.bus.dead_letters(group)]
        done, missing = 0, []
        for letter in ids:
            if await rt.bus.replay_dead_letter(letter):
                done += 1
            else:
                missing.append(letter)
        return done, missing

    done, missing = _run(replay, config, data_dir_)
    console.print(f"{done} dead letter(s) queued for replay")
    if missing:
        err.print(f"not found or already replayed: {', '.join(map(str, missing))}")
        raise typer.Exit(1)


@app.command()
def replay(
    group: Annotated[str, typer.Option("--group", "-g", help="Consumer group to rewind")],
    from_: Annotated[str, typer.Option("--from", help="RFC 3339 time (or 'beginning')")],
    topic: Annotated[str, typer.Option(help="Topic")] = "events",
    rebuild: Annotated[bool, typer.Option(
        help="For the profiles group: drop the profiles, identity links and traits first, "
             "so they are re-derived from the log (after a rule change)")] = False,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Rewind a consumer group so it receives again every event since a time.

    Processing is idempotent: events the group already applied are skipped, so a
    plain replay only fills in what is missing (after restoring a backup, say).
    With --rebuild, the profiles are dropped and re-derived from the whole log;
    stop the workers first and start them again afterwards.
    """
    from tessera.events.envelope import parse_time

    try:
        since = 0.0 if from_ == "beginning" else parse_time(from_)
    except ValueError as exc:
        err.print(f"--from: {exc}")
        raise typer.Exit(2) from None
    if rebuild and (group != "profiles" or since != 0.0):
        err.print("--rebuild re-derives the profiles group from the beginning: "
                  "use --group profiles --from beginning")
        raise typer.Exit(2)

    async def rewind(rt: Any) -> int:
        if rebuild:
            await asyncio.to_thread(rt.store.reset)
        await rt.bus.reset(topic, group, since)
        return int(await rt.bus.lag(topic, group))

    pending = _run(rewind, config, data_dir_)
    console.print(f"group {group!r} rewound: {pending} event(s) will be delivered again")


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


from tessera.identity.cli import identity_app  # noqa: E402 - batch path (docs/batch.md)
from tessera.imports.cli import import_command  # noqa: E402 - batch path (docs/batch.md)
from tessera.warehouse.cli import warehouse_app  # noqa: E402 - batch path

app.command("import")(import_command)
app.add_typer(identity_app, name="identity")
app.add_typer(warehouse_app, name="warehouse")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
