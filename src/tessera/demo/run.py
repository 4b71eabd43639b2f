"""``tessera demo``: the member-services scenario end to end, through the real HTTP API.

It starts ``tessera serve`` (API and processor, the default embedded bus and
store) as a child process, sends the simulated company's events the way its
systems would (Segment batches to ``/v1/batch``, CloudEvents batches to
``/v1/events``, several requests in flight), waits until the processor has
caught up (``/v1/stats``), and checks the unified profiles against the
simulation's ground truth: how many people became how many profiles, whether
any profile holds two people, whether family members who share an e-mail
stayed apart, whether any placeholder value became an identity, and whether
late events left the newest values in place. It shows one customer's whole
profile as the profile API returns it, with the ``curl`` commands to ask for it.
Meanwhile the customer's three activation scenarios run (abandoned cart,
roadside ETA, membership sync, :mod:`tessera.demo.activation`): their webhooks
reach a receiver in this process, and are checked against the simulation too.

:func:`run_demo_result` returns everything it measured as a :class:`DemoResult`;
:func:`run_demo` (the CLI's entry point) returns just the exit code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from tessera.config import default_config
from tessera.demo import activation
from tessera.demo import catalog as demo_catalog
from tessera.demo.scenario import Ident, Message, Scenario, batches, build_scenario
from tessera.identity.extract import IdentifierExtractor
from tessera.store import open_store
from tessera.store.base import Profile

HOST = "127.0.0.1"
BATCH_SIZE = 100
IN_FLIGHT = 8
"""Concurrent ingest requests."""
AUDIT_IN_FLIGHT = 16
READY_TIMEOUT = 60.0
STALL_TIMEOUT = 120.0
"""Give up waiting for the processor after this long without progress."""
DELIVERY_TIMEOUT = 120.0
"""Give up waiting for the activation scenarios' webhooks after this long."""
DATA_FILES = ("bus.db", "store.db")
SERVER_LOG = "demo-server.log"

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_SERVER_FAILED = 2
EXIT_INTERRUPTED = 130


class DemoError(Exception):
    """The server could not be started or stopped answering."""


@dataclass(slots=True)
class WrongMerge:
    """A profile holding identifiers of more than one simulated person."""

    profile_id: str
    people: list[str]
    identities: list[str]


@dataclass(slots=True)
class DemoResult:
    """What one demo run sent, what Tessera made of it, and how that compares to the truth."""

    exit_code: int = EXIT_OK
    url: str = ""
    data_dir: str = ""
    server_pid: int | None = None
    """The ``tessera serve`` process, whose process group also holds its worker."""
    failure: str | None = None
    # the simulation
    people: int = 0
    members: int = 0
    sources: int = 0
    expected_profiles: int = 0
    """Profiles the records can at best form: people plus records tied to nothing else."""
    stray: dict[str, int] = field(default_factory=dict)
    distinct_identifiers: int = 0
    raw_spellings: int = 0
    late_events: int = 0
    unattributable: int = 0
    # ingest
    events_sent: int = 0
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    duplicates_sent: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    retries: int = 0
    ingest_seconds: float = 0.0
    processing_seconds: float = 0.0
    """From the first request until the processor had applied everything."""
    # the store, from /v1/stats
    events_applied: int = 0
    profiles: int = 0
    identities: int = 0
    merges: int = 0
    # checked against the ground truth, through the profile API
    profiles_checked: int = 0
    orphan_profiles: int = 0
    """Profiles holding none of the simulation's identifiers (should be 0)."""
    wrong_merges: list[WrongMerge] = field(default_factory=list)
    split_people: int = 0
    """People whose records are in more than one profile."""
    unexpected_splits: list[str] = field(default_factory=list)
    """People in more profiles than their records justify."""
    missing_identifiers: list[str] = field(default_factory=list)
    """Identifiers that were sent but that no profile holds."""
    unknown_identities: list[str] = field(default_factory=list)
    """Identities a profile holds that the simulation never sent (badly normalized?)."""
    families: int = 0
    families_merged: list[tuple[str, str]] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    placeholders_linked: list[str] = field(default_factory=list)
    events_in_profiles: int = 0
    events_expected_in_profiles: int = 0
    misattributed_events: list[str] = field(default_factory=list)
    """Events on the timeline of a profile that is not their person's."""
    addresses_checked: int = 0
    addresses_wrong: list[str] = field(default_factory=list)
    late_address_members: int = 0
    misspelled_first_names: int = 0
    showcase: dict[str, Any] | None = None
    curl: list[str] = field(default_factory=list)
    activation: activation.ActivationReport | None = None
    wall_seconds: float = 0.0

    @property
    def ingest_rate(self) -> float:
        return self.events_sent / self.ingest_seconds if self.ingest_seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def run_demo(
    people: int = 5_000,
    events: int = 50_000,
    data: Path | str = Path(".tessera"),
    port: int = 8765,
    keep_serving: bool = False,
    seed: int = 7,
    console: Console | None = None,
) -> int:
    """Run the demo; the process exit code (0 when everything checked out)."""
    return run_demo_result(people, events, data, port, keep_serving, seed, console).exit_code


def run_demo_result(
    people: int = 5_000,
    events: int = 50_000,
    data: Path | str = Path(".tessera"),
    port: int = 8765,
    keep_serving: bool = False,
    seed: int = 7,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo and return everything it measured and checked."""
    console = console or Console()
    data = Path(data)
    result = DemoResult(url=f"http://{HOST}:{port}", data_dir=str(data))
    started = time.perf_counter()
    console.rule("[bold]Tessera member-services demo")

    t0 = time.perf_counter()
    scenario = build_scenario(people, events, seed)
    _describe_scenario(console, scenario, result, time.perf_counter() - t0)

    server = Server(data, port, console)
    receiver: activation.Receiver | None = None
    previous_sigterm = _sigterm_interrupts()
    try:
        if not _port_free(port):
            raise DemoError(
                f"port {port} is in use (is an earlier `tessera demo --serve` still running?); "
                "choose another with --port"
            )
        _fresh_data_dir(console, data)
        receiver = activation.Receiver().start()
        data.mkdir(parents=True, exist_ok=True)
        server.config = activation.write_config(data, receiver.url)
        demo_catalog.write_catalog(server.config)
        console.print(f"Starting [bold]tessera serve[/bold] on {result.url} (data in {data}; "
                      f"webhooks to the demo's receiver on {receiver.url}) ...")
        server.start()
        result.server_pid = server.pid
        server.wait_ready(READY_TIMEOUT)
        asyncio.run(_exercise(server, scenario, result, console, receiver))
        result.wall_seconds = time.perf_counter() - started
        _report(console, scenario, result)
        if keep_serving:
            _serve_until_interrupted(console, server, result)
    except DemoError as exc:
        result.failure = str(exc)
        result.exit_code = EXIT_SERVER_FAILED
        console.print(f"[red bold]demo failed:[/red bold] {exc}")
        tail = server.log_tail()
        if tail:
            console.print(Panel(tail, title=f"last lines of {server.log}", border_style="red"))
    except KeyboardInterrupt:
        result.failure = "interrupted"
        result.exit_code = EXIT_INTERRUPTED
        console.print("\n[yellow]interrupted[/yellow]")
    finally:
        if server.started:
            if server.stop():
                console.print("Server stopped.")
            else:
                console.print("[red]The server did not stop in time and was killed.[/red]")
                if result.exit_code == EXIT_OK:
                    result.exit_code = EXIT_SERVER_FAILED
                    result.failure = "the server did not stop in time"
        if receiver is not None:
            receiver.stop()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    result.wall_seconds = time.perf_counter() - started
    return result


def _sigterm_interrupts() -> Any:
    """Make SIGTERM act like Ctrl+C, so that ``kill`` of the demo also stops its server.

    Returns the previous handler (None when not on the main thread, where the
    handler cannot be set).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


# -- the server --------------------------------------------------------------


class Server:
    """``tessera serve`` (API and worker) as a child process in its own process group."""

    def __init__(self, data: Path, port: int, console: Console) -> None:
        self.data = data
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log = data / SERVER_LOG
        self.console = console
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        """Also the id of its process group (the worker is in it too)."""
        self.config: Path | None = None
        """A configuration file; without one, the built-in demo settings."""

    @property
    def started(self) -> bool:
        return self.process is not None

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tessera", "serve",
            "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data),
        ]  # fmt: skip
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        # the demo's own settings and embedded backends, whatever the environment says
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TESSERA_CONFIG", "TESSERA_BUS_URL", "TESSERA_STORE_URL")
        }
        with open(self.log, "wb") as out:
            # its own session: Ctrl+C reaches the demo, which then stops the server and
            # its worker in order; and the group can be killed as a whole if need be
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.process.pid

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"the server exited with code {self.process.returncode}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check()
            try:
                response = httpx.get(self.url + "/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise DemoError(f"the server was not ready after {timeout:.0f} s: {last}")

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGINT (a graceful stop of the API, which stops its worker), then SIGKILL."""
        process = self.process
        if process is None:
            return True
        clean = True
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # the worker is the server's child, in the same process group: the server stops
        # it on its way out; make sure nothing of the group is left behind
        deadline = time.monotonic() + 10.0
        while _group_alive(process.pid):
            if time.monotonic() > deadline:
                clean = False
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self.process = None
        return clean

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _fresh_data_dir(console: Console, data: Path) -> None:
    if not data.is_dir():
        return
    old = sorted(f for name in DATA_FILES for f in data.glob(name + "*") if f.is_file())
    if not old:
        return
    names = ", ".join(f.name for f in old)
    console.print(
        f"[yellow]{data} holds data of an earlier run ({names}); "
        "deleting it to start fresh.[/yellow]"
    )
    for f in old:
        f.unlink()


def _serve_until_interrupted(console: Console, server: Server, result: DemoResult) -> None:
    console.print(
        Panel(
            f"Tessera is still running at [bold]{result.url}[/bold] "
            f"(API docs: {result.url}/docs). Try the commands above.\n"
            f"Console: [bold]{result.url}/console[/bold], admin key [bold]ak_admin_123[/bold].\n"
            "Press [bold]Ctrl+C[/bold] to stop it.",
            border_style="green",
        )
    )
    try:
        while True:
            server.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print()
    except DemoError as exc:
        result.failure = str(exc)
        result.exit_code = EXIT_SERVER_FAILED
        console.print(f"[red]{exc}[/red]")


# -- sending, waiting, checking ----------------------------------------------


def _keys() -> tuple[dict[str, str], str]:
    """The write key of each source and a read key, from the demo's configuration."""
    config = default_config()
    write = {s.name: s.write_key for s in config.sources}
    read = next(
        k.key for k in config.api_keys if "profiles:read" in k.scopes and "admin" not in k.scopes
    )
    return write, read


def _admin_key() -> str:
    return next(k.key for k in default_config().api_keys if "admin" in k.scopes)


async def _exercise(
    server: Server, scenario: Scenario, result: DemoResult, console: Console,
    receiver: activation.Receiver,
) -> None:
    write_keys, read_key = _keys()
    limits = httpx.Limits(
        max_connections=AUDIT_IN_FLIGHT, max_keepalive_connections=AUDIT_IN_FLIGHT
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=60.0, limits=limits) as client:
        with _progress(console) as progress:
            first_request = time.perf_counter()
            await _send(client, server, scenario, write_keys, result, progress)
            await _wait_processed(client, server, read_key, result, progress, first_request)
            delivered = await _wait_delivered(client, server, receiver, progress)
            result.activation = delivered
        if result.rejected or result.events_applied < result.accepted:
            result.exit_code = EXIT_CHECK_FAILED
        await _audit(client, server, read_key, scenario, result)
        await _showcase(client, read_key, scenario, result)
        refused = await demo_catalog.send_malformed(client, write_keys["membership"])
        if refused is None:
            console.print("[red]The event catalog accepted a malformed membership renewal.[/red]")
            result.exit_code = EXIT_CHECK_FAILED
        else:
            console.print("The event catalog refused a malformed membership renewal (400): "
                          + "; ".join(refused) + ". The console's Catalog page shows it.")
    activation.check(scenario, receiver, delivered, IdentifierExtractor(default_config()))
    if delivered.problems:
        result.exit_code = EXIT_CHECK_FAILED
    if (
        result.wrong_merges
        or result.unexpected_splits
        or result.placeholders_linked
        or result.families_merged
        or result.missing_identifiers
        or result.unknown_identities
        or result.orphan_profiles
        or result.addresses_wrong
        or result.misattributed_events
        or result.events_in_profiles != result.events_expected_in_profiles
    ):
        result.exit_code = EXIT_CHECK_FAILED


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )


async def _send(
    client: httpx.AsyncClient,
    server: Server,
    scenario: Scenario,
    write_keys: dict[str, str],
    result: DemoResult,
    progress: Progress,
) -> None:
    todo = batches(scenario.messages, BATCH_SIZE)
    result.requests = len(todo)
    result.duplicates_sent = scenario.duplicates
    task = progress.add_task("Sending events", total=len(scenario.messages), note="")
    started = time.perf_counter()
    pending = iter(todo)

    async def sender() -> None:
        for source, protocol, messages in pending:
            await _post(client, server, source, protocol, messages, write_keys[source], result)
            result.events_sent += len(messages)
            elapsed = time.perf_counter() - started
            progress.update(
                task,
                advance=len(messages),
                note=f"{result.events_sent / max(elapsed, 1e-9):,.0f} events/s",
            )

    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    result.ingest_seconds = time.perf_counter() - started


async def _post(
    client: httpx.AsyncClient,
    server: Server,
    source: str,
    protocol: str,
    messages: list[Message],
    key: str,
    result: DemoResult,
) -> None:
    if protocol == "segment":
        path = "/v1/batch"
        body = orjson.dumps({"batch": [m.body for m in messages]})
        # Segment's way: HTTP Basic with the write key as the user name
        basic = base64.b64encode(f"{key}:".encode()).decode()
        headers = {"content-type": "application/json", "authorization": f"Basic {basic}"}
    else:
        path = "/v1/events"
        body = orjson.dumps([m.body for m in messages])
        headers = {
            "content-type": "application/cloudevents-batch+json",
            "authorization": f"Bearer {key}",
        }
    for attempt in range(1, 7):
        try:
            response = await client.post(path, content=body, headers=headers)
        except httpx.TransportError as exc:
            server.check()
            if attempt == 6:
                raise DemoError(f"POST {path} failed: {exc!r}") from None
            result.retries += 1
            await asyncio.sleep(0.2 * attempt)
            continue
        if response.status_code in (429, 503) and attempt < 6:
            result.retries += 1
            await asyncio.sleep(min(float(response.headers.get("retry-after") or 1), 5.0))
            continue
        if response.is_success:
            answer = response.json()
            result.accepted += int(answer.get("accepted", 0))
            result.duplicates += int(answer.get("duplicates", 0))
        else:
            result.rejected += len(messages)
            if len(result.rejections) < 5:
                result.rejections.append(
                    f"{source}: POST {path} -> {response.status_code} {response.text[:400]}"
                )
        return


async def _wait_processed(
    client: httpx.AsyncClient,
    server: Server,
    read_key: str,
    result: DemoResult,
    progress: Progress,
    first_request: float,
) -> None:
    """Poll ``/v1/stats`` until the processor has applied every accepted event."""
    headers = {"Authorization": f"Bearer {read_key}"}
    task = progress.add_task("Building profiles", total=result.accepted, note="")
    last_change = time.monotonic()
    last_applied = -1
    while True:
        server.check()
        response = await client.get("/v1/stats", headers=headers)
        if response.status_code != 200:
            raise DemoError(f"GET /v1/stats -> {response.status_code} {response.text[:300]}")
        stats = response.json()
        store = stats.get("store", {})
        lag = int(stats.get("lag", {}).get("profiles", 0))
        applied = int(store.get("events_applied", 0))
        progress.update(
            task,
            completed=min(applied, result.accepted),
            note=f"{store.get('profiles', 0):,} profiles, lag {lag:,}",
        )
        if applied != last_applied:
            last_applied, last_change = applied, time.monotonic()
        done = lag == 0 and applied >= result.accepted
        stuck_at_zero = lag == 0 and time.monotonic() - last_change > 5.0
        if done or stuck_at_zero:
            break
        if time.monotonic() - last_change > STALL_TIMEOUT:
            raise DemoError(
                f"the processor made no progress for {STALL_TIMEOUT:.0f} s "
                f"({applied:,} of {result.accepted:,} events applied, lag {lag:,})"
            )
        await asyncio.sleep(0.2)
    result.processing_seconds = time.perf_counter() - first_request
    result.events_applied = applied
    result.profiles = int(store.get("profiles", 0))
    result.identities = int(store.get("identities", 0))
    result.merges = int(store.get("merges", 0))


async def _wait_delivered(
    client: httpx.AsyncClient,
    server: Server,
    receiver: activation.Receiver,
    progress: Progress,
) -> activation.ActivationReport:
    """Until every subscription has delivered what it holds and no journey waits, and
    nothing has changed for two seconds (``/v1/subscriptions``, ``/v1/journeys``)."""
    headers = {"Authorization": f"Bearer {_admin_key()}"}
    report = activation.ActivationReport()
    task = progress.add_task("Delivering webhooks", total=None, note="")
    started = time.perf_counter()
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    last: tuple[int, ...] | None = None
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        server.check()
        subs_r = await client.get("/v1/subscriptions", headers=headers)
        journeys_r = await client.get("/v1/journeys", headers=headers)
        for r in (subs_r, journeys_r):
            if r.status_code != 200:
                raise DemoError(f"GET {r.request.url.path} -> {r.status_code} {r.text[:300]}")
        subs = subs_r.json()["subscriptions"]
        journeys = journeys_r.json()["journeys"]
        stats = [s["stats"] for s in subs]
        busy = sum((s["lag"] if s["lag"] is not None else 1) + s["in_flight"] for s in stats)
        waiting = sum(c["waiting"] for j in journeys for c in j["steps"].values())
        whole = [j["steps"].get("*", {}) for j in journeys]
        report.journey = {j["name"]: j["steps"].get("*", {}) for j in journeys}
        now = (receiver.count(), busy, waiting,
               *(w.get("entered", 0) + w.get("exited", 0) + w.get("completed", 0)
                 for w in whole))
        if now != last:
            last, steady_since = now, time.monotonic()
        progress.update(task, note=f"{receiver.count():,} received, {busy:,} to deliver, "
                                   f"{waiting:,} carts waiting for a checkout")
        if busy == 0 and waiting == 0 and time.monotonic() - steady_since >= 2.0:
            report.settled = True
            break
        await asyncio.sleep(0.25)
    report.seconds = time.perf_counter() - started
    progress.update(task, total=1, completed=1)
    return report


async def _get_profile(
    client: httpx.AsyncClient, read_key: str, type_: str, value: str
) -> dict[str, Any] | None:
    path = f"/v1/profiles/{quote(f'{type_}:{value}', safe=':@+')}"
    response = await client.get(path, headers={"Authorization": f"Bearer {read_key}"})
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise DemoError(f"GET {path} -> {response.status_code} {response.text[:300]}")
    profile: dict[str, Any] = response.json()
    return profile


async def _gather_limited(jobs: Iterable[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with semaphore:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


def _read_profiles(data: Path) -> tuple[list[Profile], dict[str, list[str]]]:
    """Every live profile and the ids of the events on its timeline, read through the
    store contract (the server keeps running)."""
    store = open_store(None, data)
    try:
        profiles = [p for p in map(store.get_profile, list(store.iter_profile_ids())) if p]
        timelines = {
            p.id: [str(e.event.get("id")) for e in store.timeline(p.id, p.event_count + 1)]
            for p in profiles
        }
        return profiles, timelines
    finally:
        store.close()


async def _audit(
    client: httpx.AsyncClient,
    server: Server,
    read_key: str,
    scenario: Scenario,
    result: DemoResult,
) -> None:
    """Compare every profile with the simulation's ground truth.

    The profiles are read from the demo's store directly: one request per profile
    through the API would take longer than sending all the events did. The
    placeholders are looked up through the profile API, as a client would.
    """
    server.check()
    read, timelines = await asyncio.to_thread(_read_profiles, server.data)
    profiles = {p.id: p for p in read}
    where: dict[Ident, str] = {}
    for profile in profiles.values():
        for link in profile.identities:
            where[(link.type, link.value)] = profile.id
    result.profiles_checked = len(profiles)
    result.missing_identifiers = [f"{t}:{v}" for t, v in scenario.owner if (t, v) not in where]

    # placeholders: none may resolve, and none may be stored as an identity
    placeholders = sorted(scenario.placeholders)
    result.placeholders = [f"{t}:{v}" for t, v in placeholders]
    found = await _gather_limited(
        (_get_profile(client, read_key, t, v) for t, v in placeholders), AUDIT_IN_FLIGHT
    )
    for (type_, value), answer in zip(placeholders, found, strict=True):
        if answer is not None:
            result.placeholders_linked.append(f"{type_}:{value} -> {answer['id']}")
    raw_placeholders = {v.strip().lower() for _, v in placeholders}

    # who is in which profile
    people_in: dict[str, set[int]] = {}
    for pid, profile in profiles.items():
        who = people_in[pid] = set()
        for link in profile.identities:
            key = (link.type, link.value)
            if key in scenario.owner:
                who.add(scenario.owner[key])
            elif key not in scenario.shared:
                text = f"{key[0]}:{key[1]}"
                result.unknown_identities.append(text)
                if key[1].strip().lower() in raw_placeholders:
                    result.placeholders_linked.append(f"{text} -> {pid}")
        if not who:
            result.orphan_profiles += 1
        if len(who) > 1:
            result.wrong_merges.append(
                WrongMerge(
                    pid,
                    [scenario.people[i].key for i in sorted(who)],
                    [f"{link.type}:{link.value}" for link in profile.identities],
                )
            )
    profiles_of: dict[int, set[str]] = {}
    for ident, index in scenario.owner.items():
        if ident in where:
            profiles_of.setdefault(index, set()).add(where[ident])
    for someone in scenario.people:
        n = len(profiles_of.get(someone.index, ()))
        if n > 1:
            result.split_people += 1
        if n > scenario.components[someone.index]:
            result.unexpected_splits.append(someone.key)

    # family members share an e-mail; each keeps their own profile
    result.families = len(scenario.families)
    for a, b in scenario.families:
        pa = where.get(("member_number", scenario.people[a].member_number or ""))
        pb = where.get(("member_number", scenario.people[b].member_number or ""))
        if pa is not None and pa == pb:
            result.families_merged.append((scenario.people[a].key, scenario.people[b].key))

    # survivorship: the newest address by event time wins, however late older ones came
    for index, address in scenario.expected_address.items():
        member = scenario.people[index]
        home = where.get(("member_number", member.member_number or ""))
        if home is None:
            continue
        result.addresses_checked += 1
        trait = profiles[home].traits.get("address")
        if trait is None or trait.value != address:
            result.addresses_wrong.append(member.key)
    result.late_address_members = len(scenario.late_address)
    for pid, who in people_in.items():
        if len(who) == 1:
            first_name = scenario.people[next(iter(who))].first_name
            trait = profiles[pid].traits.get("first_name")
            if trait is not None and trait.value != first_name:
                result.misspelled_first_names += 1

    # every event with a usable identifier is on the timeline of its person's profile
    sent = {m.event_id: m for m in scenario.messages if not m.duplicate}
    result.events_expected_in_profiles = sum(
        1 for m in sent.values() if any(i not in scenario.shared for i in m.idents)
    )
    for pid, event_ids in timelines.items():
        for event_id in event_ids:
            result.events_in_profiles += 1
            message = sent.get(event_id)
            if message is None or message.person not in people_in[pid]:
                result.misattributed_events.append(f"{event_id} -> {pid}")


async def _showcase(
    client: httpx.AsyncClient, read_key: str, scenario: Scenario, result: DemoResult
) -> None:
    person = scenario.people[scenario.showcase()]
    # looked up by e-mail, as a marketer would, unless someone else shares the address
    lookups = [("email", person.email)] if ("email", person.email) in scenario.owner else []
    if person.member_number is not None:
        lookups.append(("member_number", person.member_number))
    if person.user_id is not None:
        lookups.append(("user_id", person.user_id))
    if not lookups:
        return
    profile = await _get_profile(client, read_key, *lookups[0])
    if profile is None:
        return
    headers = {"Authorization": f"Bearer {read_key}"}
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:  # the whole timeline, newest first, page by page
        response = await client.get(
            f"/v1/profiles/{profile['id']}/events", params=params, headers=headers
        )
        if response.status_code != 200:
            break
        page = response.json()
        events += page.get("events", [])
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    newest: dict[str, dict[str, Any]] = {}
    for event in events:
        newest.setdefault(str(event.get("tesserasource")), event)
    mine = [m for m in scenario.messages if m.person == person.index and not m.duplicate]
    spellings = {
        t: sorted(scenario.spellings.get((t, v), set()))
        for t, v in (("email", person.email), ("phone", person.phone))
    }
    result.showcase = {
        "person": person.key,
        "name": person.name,
        "email": person.email,
        "member_number": person.member_number,
        "sources": sorted(scenario.sources_of(person.index)),
        "events_sent": len(mine),
        "events_attributable": sum(1 for m in mine if m.idents),
        "late_address": person.index in scenario.late_address,
        "spellings": spellings,
        "profile": profile,
        "events": events,
        "newest_per_source": list(newest.values()),
    }
    url = result.url
    auth = "-H 'Authorization: Bearer " + read_key + "'"
    first = f"{lookups[0][0]}:{lookups[0][1]}"
    result.curl = [f"curl {auth} {url}/v1/profiles/{first}"]
    result.curl += [f"curl {auth} {url}/v1/profiles/{t}:{v}" for t, v in lookups[1:2]]
    result.curl += [
        f"curl {auth} '{url}/v1/profiles/{first}/events?limit=10'",
        f"curl {auth} {url}/v1/stats",
    ]


# -- printing ----------------------------------------------------------------


def _describe_scenario(
    console: Console, scenario: Scenario, result: DemoResult, seconds: float
) -> None:
    result.people = len(scenario.people)
    result.members = sum(p.is_member for p in scenario.people)
    result.sources = len({m.source for m in scenario.messages})
    result.expected_profiles = scenario.expected_profiles
    result.stray = dict(scenario.stray)
    result.distinct_identifiers = len(scenario.owner) + len(scenario.shared)
    result.raw_spellings = sum(len(s) for s in scenario.spellings.values())
    result.late_events = scenario.late
    result.unattributable = scenario.unattributable
    console.print(
        f"Simulated [bold]{result.people:,}[/bold] people of a roadside assistance, membership, "
        f"travel and insurance company ({result.members:,} members, {len(scenario.families)} "
        f"households sharing an e-mail) and [bold]{len(scenario.messages):,}[/bold] events "
        f"from {result.sources} systems (seed {scenario.seed}, {seconds:.1f} s).",
        highlight=False,
    )


def _n(value: int) -> str:
    return f"{value:,}"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def _report(console: Console, scenario: Scenario, result: DemoResult) -> None:
    ok, bad = "[green]✔[/green]", "[red]✘[/red]"

    ingest = Table(title="Ingest (the real HTTP API)", show_header=False, title_justify="left")
    ingest.add_column(style="bold")
    ingest.add_column()
    ingest.add_row(
        "events sent",
        f"{_n(result.events_sent)} in {_n(result.requests)} batched requests "
        f"({IN_FLIGHT} in flight): Segment to /v1/batch, CloudEvents to /v1/events",
    )
    ingest.add_row("accepted", f"{_n(result.accepted)} new events, durable on the bus")
    ingest.add_row(
        "duplicates",
        f"{_n(result.duplicates)} recognised by id and stored once "
        f"({_n(result.duplicates_sent)} were re-sent on purpose)",
    )
    ingest.add_row(
        "rejected",
        f"{ok if not result.rejected else bad} {_n(result.rejected)}"
        + (f" ({result.retries} requests retried)" if result.retries else ""),
    )
    ingest.add_row(
        "ingest rate",
        f"{result.ingest_rate:,.0f} events/s ({result.ingest_seconds:.1f} s for all requests)",
    )
    ingest.add_row(
        "processing",
        f"{ok if result.events_applied >= result.accepted else bad} "
        f"{_n(result.events_applied)} events applied to profiles "
        f"{result.processing_seconds:.1f} s after the first request "
        f"({result.events_applied / max(result.processing_seconds, 1e-9):,.0f} events/s "
        "end to end)",
    )
    console.print(ingest)
    for rejection in result.rejections:
        console.print(f"  [red]{rejection}[/red]", highlight=False)

    stray = result.stray
    legit = result.expected_profiles - result.people
    split_why = ", ".join(
        _plural(count, one, many)
        for count, one, many in (
            (
                stray.get("browser", 0),
                "browser on which its owner never logged in or gave an e-mail",
                "browsers on which their owners never logged in or gave an e-mail",
            ),
            (
                stray.get("phone", 0),
                "phone number seen only on calls (an office line)",
                "phone numbers seen only on calls (office lines)",
            ),
            (stray.get("other", 0), "other group of records", "other groups of records"),
        )
        if count
    )
    quality = Table(
        title="Identity resolution, checked against the simulation's ground truth",
        show_header=False,
        title_justify="left",
    )
    quality.add_column(style="bold")
    quality.add_column()
    quality.add_row(
        "identities",
        f"{_n(result.distinct_identifiers)} distinct identifiers sent "
        f"({_n(result.raw_spellings)} raw spellings: case, blanks, phone formats) "
        f"→ {_n(result.identities)} identities in the store → {_n(result.profiles)} profiles",
    )
    quality.add_row(
        "profiles",
        f"{_n(result.people)} people → [bold]{_n(result.profiles)} profiles[/bold] "
        f"({_n(result.merges)} merges, e.g. an anonymous visitor who logged in)",
    )
    if legit:
        expected = (
            f"{_n(result.expected_profiles)}, not {_n(result.people)}: "
            f"{_plural(legit, 'group', 'groups')} of records share no identifier with the rest "
            f"of their owner's records ({split_why}). Nothing ties them to that person, so they "
            f"rightly stay separate profiles ({_plural(result.split_people, 'person', 'people')} "
            "split this way); merging them would be guessing."
        )
    else:
        expected = f"{_n(result.expected_profiles)}: every person's records link up"
    quality.add_row("expected", expected)
    quality.add_row(
        "wrong merges",
        f"{ok if not result.wrong_merges else bad} "
        f"{_plural(len(result.wrong_merges), 'profile holds', 'profiles hold')} records of two "
        f"people (checked all {_n(result.profiles_checked)} profiles)",
    )
    events_ok = (
        not result.misattributed_events
        and result.events_in_profiles == result.events_expected_in_profiles
    )
    quality.add_row(
        "timelines",
        f"{ok if events_ok else bad} {_n(result.events_in_profiles)} events on profile "
        f"timelines (of {_n(result.events_expected_in_profiles)} with a usable identifier), "
        f"{len(result.misattributed_events)} in the wrong person's profile",
    )
    quality.add_row(
        "unexpected splits",
        f"{ok if not result.unexpected_splits else bad} "
        f"{_plural(len(result.unexpected_splits), 'person is', 'people are')} in more profiles "
        "than their records justify",
    )
    quality.add_row(
        "families",
        f"{ok if not result.families_merged else bad} {result.families} households share one "
        f"e-mail with different member numbers: {len(result.families_merged)} merged",
    )
    shown = sorted({p.split(":", 1)[1] for p in result.placeholders})
    quality.add_row(
        "placeholders",
        f"{ok if not result.placeholders_linked else bad} {', '.join(shown)} sent in identifier "
        f"fields: {len(result.placeholders_linked)} became identities "
        f"({_n(result.unattributable)} events had nothing else and belong to no profile)",
    )
    quality.add_row(
        "late events",
        f"{ok if not result.addresses_wrong else bad} {_n(result.late_events)} arrived after "
        f"newer ones; {_n(result.addresses_checked - len(result.addresses_wrong))} of "
        f"{_n(result.addresses_checked)} members show their newest address "
        f"({result.late_address_members} had an older move arrive after a newer one)",
    )
    problems = []
    if result.missing_identifiers:
        problems.append(f"{len(result.missing_identifiers)} identifiers sent but in no profile")
    if result.unknown_identities:
        problems.append(f"{len(result.unknown_identities)} identities the simulation never sent")
    if result.orphan_profiles:
        problems.append(f"{result.orphan_profiles} profiles hold no identifier that was sent")
    if problems:
        quality.add_row("also", f"{bad} " + "; ".join(problems))
    quality.add_row(
        "name typos",
        f"{_plural(result.misspelled_first_names, 'profile shows', 'profiles show')} a first "
        "name with a typo: the latest record wins, and staff mistype names (a trait rule "
        "preferring membership would fix it)",
    )
    console.print(quality)
    for wrong in result.wrong_merges[:5]:
        console.print(
            f"  [red]wrong merge {wrong.profile_id}: {', '.join(wrong.people)} "
            f"({', '.join(wrong.identities)})[/red]",
            highlight=False,
        )
    for label, examples in (
        ("split more than their records justify", result.unexpected_splits),
        ("sent but in no profile", result.missing_identifiers),
        ("in a profile but never sent", result.unknown_identities),
        ("placeholder linked", result.placeholders_linked),
        ("newest address lost", result.addresses_wrong),
        ("event in someone else's profile", result.misattributed_events),
    ):
        if examples:
            sample = ", ".join(examples[:5]) + (", ..." if len(examples) > 5 else "")
            console.print(f"  [red]{label}: {sample}[/red]", highlight=False)

    if result.showcase:
        console.print(_customer_360(result.showcase))
        console.print("Look it up yourself" + (":" if result.curl else ""))
        for line in result.curl:
            console.print(f"  [cyan]{line}[/cyan]", highlight=False, soft_wrap=True)

    if result.activation is not None:
        console.print(_activation_table(result.activation))

    verdict = (
        f"[bold green]{_n(result.people)} people → {_n(result.profiles)} profiles, "
        f"{len(result.wrong_merges)} wrong merges[/bold green]"
        if result.exit_code == EXIT_OK
        else f"[bold red]checks failed: {_n(result.people)} people → {_n(result.profiles)} "
        f"profiles, {len(result.wrong_merges)} wrong merges[/bold red]"
    )
    console.print(f"{verdict} (demo took {result.wall_seconds:.1f} s)")


def _activation_table(report: activation.ActivationReport) -> Table:
    ok, bad = "[green]✔[/green]", "[red]✘[/red]"
    table = Table(
        title="Activation: the customer's three scenarios (signed webhooks to the demo's "
              "receiver)", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "delivered",
        f"{ok if report.settled else bad} {_n(report.webhooks)} webhooks, every one signed "
        f"(Standard Webhooks) {ok if not report.unsigned else bad}, "
        f"{_n(report.redelivered)} delivered twice; all done "
        f"{report.seconds:.1f} s after the profiles were"
        if report.settled else f"{bad} not all delivered within {DELIVERY_TIMEOUT:.0f} s",
    )
    channels = ", ".join(f"{n:,} by {c}" for c, n in sorted(report.channels.items()))
    table.add_row(
        "roadside ETA",
        f"{ok if report.notified == report.tickets else bad} {_n(report.notified)} of "
        f"{_n(report.tickets)} driver assignments told the member \"Your driver arrives in N "
        f"minutes\" on their preferred channel ({channels}); "
        f"{_plural(len(report.eta_wrong), 'wrong ETA', 'wrong ETAs')}, "
        f"{len(report.contact_wrong)} to someone else's contact",
    )
    causes = ", ".join(f"{n:,} {c.replace('_', ' ')}" for c, n in
                       sorted(report.sync_by_cause.items(), key=lambda kv: -kv[1]))
    table.add_row(
        "membership sync",
        f"{ok if not report.sync_extra_fields and report.address_synced else bad} "
        f"{_n(report.sync_messages)} changes sent to the membership app ({causes}); "
        f"{_n(report.address_synced)} of {_n(report.address_changes)} address changes arrived "
        "as just the address, old and new (a late, older address changes nothing and sends "
        "nothing)",
    )
    whole = report.journey.get("abandoned-cart", {})
    table.add_row(
        "abandoned cart",
        f"{ok if not report.wrong_reminders else bad} {_n(report.carts)} carts, "
        f"{_n(report.carts_checked_out)} checked out. The journey: {whole.get('entered', 0):,} "
        f"entered, {whole.get('exited', 0):,} left on a checkout in time, "
        f"{_n(report.reminders)} reminders sent to marketing after {activation.CART_WAIT} "
        f"(30 minutes in production), {len(report.wrong_reminders)} for a cart that was "
        "checked out",
    )
    for label, example in (("ETA message", report.roadside_example),
                           ("address sync", report.sync_example),
                           ("cart reminder", report.reminder_example)):
        if example is not None:
            table.add_row(f"  e.g. {label}", Text(orjson.dumps(example).decode()))
    for problem in report.problems:
        table.add_row(f"{bad} problem", f"[red]{problem}[/red]")
    return table


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(str(v) for v in value.values())
    return str(value)


def _when(iso_time: str) -> str:
    return iso_time[:16].replace("T", " ")


def _customer_360(show: dict[str, Any]) -> Panel:
    profile = show["profile"]
    traits = Table(title="Traits (the surviving value, where it came from and when)",
                   title_justify="left", expand=True)  # fmt: skip
    traits.add_column("trait", style="bold")
    traits.add_column("value")
    traits.add_column("source")
    traits.add_column("event time")
    for name, trait in sorted(profile["traits"].items()):
        traits.add_row(name, _value(trait["value"]), trait["source"], _when(trait["time"]))
    identities = Table(title="Identities", title_justify="left", expand=True)
    identities.add_column("type", style="bold")
    identities.add_column("value")
    identities.add_column("first seen from")
    identities.add_column("linked at")
    for ident in profile["identities"]:
        identities.add_row(
            ident["type"], ident["value"], ident["source"], _when(ident["linked_at"])
        )
    events = Table(
        title=f"Latest events (the newest from each system; {len(show['events'])} in all)",
        title_justify="left",
        expand=True,
    )
    events.add_column("time")
    events.add_column("source")
    events.add_column("type")
    events.add_column("detail")
    for event in show["newest_per_source"]:
        events.add_row(
            _when(event.get("time", "")),
            event.get("tesserasource", ""),
            _event_name(event),
            _detail(event),
        )
    spellings = "; ".join(
        f"{kind} as " + ", ".join(repr(s) for s in sorted(values))
        for kind, values in show["spellings"].items()
        if values
    )
    summary = Text.from_markup(
        f"[bold]{show['name']}[/bold] ({show['person']} in the simulation): "
        f"{show['events_sent']} events from {len(show['sources'])} systems "
        f"({', '.join(show['sources'])}), {spellings}.\n"
        f"One profile [bold]{profile['id']}[/bold] with {profile['event_count']} events, "
        f"{len(profile['identities'])} identities; "
        f"{_plural(len(profile['merged_from']), 'other profile was', 'other profiles were')} "
        "merged into it as its records linked up."
        + (
            "\nAn older change of address arrived after the newest one; the address below is "
            "still the newest (by event time)."
            if show["late_address"]
            else ""
        )
    )
    return Panel(
        Group(summary, traits, identities, events),
        title="Customer 360",
        border_style="blue",
    )


def _event_name(event: dict[str, Any]) -> str:
    kind = str(event.get("type", ""))
    return kind.removeprefix("com.example.")


DETAIL_SKIP = {
    "member_number", "email", "phone", "first_name", "last_name", "previous_address", "url",
    "consent", "location", "anonymousId", "userId", "title",
}  # fmt: skip


def _detail(event: dict[str, Any]) -> str:
    """A few telling fields of an event's data."""
    data = event.get("data")
    if not isinstance(data, dict):
        return ""
    if str(event.get("source", "")).startswith("segment/"):
        fields = data.get("properties") or data.get("traits") or {}
        parts = [str(data["name"])] if data.get("name") else []
    else:
        fields, parts = data, []
    parts += [
        f"{k}={_value(v)}"
        for k, v in fields.items()
        if k not in DETAIL_SKIP and not k.endswith("_id") and v is not None
    ][:3]
    return " ".join(parts)
