"""Servers for the scale-out tests.

*Shared* services (the machine's PostgreSQL and NATS, used by everyone's tests
at once) are only ever used through a name of their own: a PostgreSQL schema
and a NATS stream prefix unique to the test, removed afterwards. Tests that
stop and restart a server start a *private* one on a free port instead, with
its data in a temporary directory, and always stop it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tessera.bus.nats import delete_streams as nats_delete_streams
from tests.processes import free_port
from tests.services import require_nats, require_postgres

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _postgres_bin() -> Path | None:
    """The directory of initdb / pg_ctl: on PATH, or the newest Debian-style install."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def missing(what: str) -> None:
    """Skip, or fail when CI requires the services."""
    if os.environ.get("TESSERA_REQUIRE_SERVICES"):
        pytest.fail(f"{what} and TESSERA_REQUIRE_SERVICES is set")
    pytest.skip(what)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port) == up:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} is still {'closed' if up else 'open'} after {timeout}s")


def unique_name() -> str:
    return uuid.uuid4().hex[:12]


# -- shared services, isolated by name ------------------------------------------


def shared_nats_url(prefix: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"stream_prefix": prefix.upper(),
                                              "subject_prefix": prefix.lower(),
                                              **options}.items())
    return f"{require_nats()}?{query}"


def delete_streams(server: str, stream_prefix: str) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(asyncio.wait_for(nats_delete_streams(server, stream_prefix), 20))


def drop_schema(url: str, schema: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(
            url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def shared_nats(**options: object) -> Iterator[str]:
    """A bus URL on the machine's NATS with a stream prefix of its own; streams deleted after."""
    prefix = f"ts{unique_name()}"
    url = shared_nats_url(prefix, **options)
    try:
        yield url
    finally:
        delete_streams(require_nats(), prefix.upper())


@dataclasses.dataclass(frozen=True)
class Schema:
    """A store URL for ``tessera`` processes, and what a test needs to look inside."""

    server: str
    """The plain server URL (no Tessera options), for psycopg."""
    name: str
    app: str
    """``application_name`` of the store's connections, to find them in pg_stat_activity."""

    @property
    def store_url(self) -> str:
        return f"{self.server}?schema={self.name}&application_name={self.app}"


@contextlib.contextmanager
def postgres_schema(server: str) -> Iterator[Schema]:
    """A schema of its own on ``server``, dropped afterwards."""
    name = unique_name()
    schema = Schema(server, f"ts_{name}", f"tessera-{name}")
    try:
        yield schema
    finally:
        drop_schema(server, schema.name)


@contextlib.contextmanager
def shared_postgres() -> Iterator[Schema]:
    with postgres_schema(require_postgres()) as schema:
        yield schema


# -- private servers that tests may stop ----------------------------------------


class PrivateNats:
    """``nats-server -js`` on a free port with its store in a temporary directory."""

    def __init__(self, root: Path) -> None:
        if not Path(NATS_SERVER).exists():
            missing("nats-server is not installed")
        self.port = free_port()
        self.store_dir = root / "jetstream"
        self.log = root / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> PrivateNats:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                 "-sd", str(self.store_dir)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, up=True)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        wait_port(self.port, up=False)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, run as the ``postgres`` OS user.

    PostgreSQL refuses to run as root, so when the tests run as root the data
    directory is given to ``postgres`` and its commands run through ``runuser``.
    """

    def __init__(self) -> None:
        bindir = _postgres_bin()
        if bindir is None:
            missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        assert bindir is not None
        self.bin = bindir
        self.port = free_port()
        # not under pytest's root-only tmp_path: the postgres user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                shutil.chown(self.root, "postgres", "postgres")
            except (LookupError, OSError):
                shutil.rmtree(self.root, ignore_errors=True)
                missing("PostgreSQL cannot run as root and there is no postgres user")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def start(self) -> PrivatePostgres:
        # fsync off: this tests process crashes, not power losses (the OS keeps the writes)
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")
        wait_port(self.port, up=True)
        return self

    def stop(self, mode: str = "fast") -> None:
        """``mode`` "immediate" is a crash: no checkpoint, recovery at the next start."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        wait_port(self.port, up=False)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
