"""A private PostgreSQL cluster with ``wal_level=logical`` for the CDC tests.

The machine's shared PostgreSQL must not be restarted or reconfigured (other
tests use it at the same time), so logical decoding gets its own cluster:
``initdb`` into a temporary directory owned by the ``postgres`` user, trust
authentication, listening on 127.0.0.1 at a free port with its socket in the
same directory, stopped and removed when the session ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN_CANDIDATES = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15)]


def _bin() -> Path | None:
    for path in BIN_CANDIDATES:
        if (path / "initdb").exists():
            return path
    return None


def _wal2json(bin_dir: Path) -> bool:
    out = subprocess.run([str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True,
                         text=True, check=False).stdout.strip() if (
        bin_dir / "pg_config").exists() else ""
    libdirs = [out] if out else []
    libdirs.append(str(bin_dir.parent / "lib"))
    return any(Path(d, "wal2json.so").exists() for d in libdirs)


def _unavailable(message: str) -> None:
    if os.environ.get("TESSERA_REQUIRE_SERVICES"):
        pytest.fail(message + " and TESSERA_REQUIRE_SERVICES is set")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*cmd: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


@contextlib.contextmanager
def logical_cluster() -> Iterator[str]:
    """Start the cluster; yields a DSN for its ``postgres`` database."""
    bin_dir = _bin()
    if bin_dir is None:
        _unavailable("PostgreSQL server binaries (initdb) are not installed")
    assert bin_dir is not None
    if not _wal2json(bin_dir):
        _unavailable("the wal2json output plugin is not installed (postgresql-NN-wal2json)")
    root = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    try:
        subprocess.run(_as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                    "-U", "postgres", "--no-sync", "-E", "UTF8"),
                       check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} "
                   "-c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 "
                   "-c fsync=off -c full_page_writes=off "
                   "-c shared_buffers=32MB -c output_plugin_libraries=wal2json")
        subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                                    "-l", str(root / "log"), "-w", "-t", "60", "start"),
                       check=True, capture_output=True, timeout=90)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "-w", "-t", "30", "stop"),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


_SHARED: dict[str, Any] = {"users": 0, "dsn": None, "stack": None}


@contextlib.contextmanager
def shared_logical_cluster() -> Iterator[str]:
    """One cluster for every session fixture that asks (the relay and example tests)."""
    if _SHARED["users"] == 0:
        stack = contextlib.ExitStack()
        _SHARED["dsn"] = stack.enter_context(logical_cluster())
        _SHARED["stack"] = stack
    _SHARED["users"] += 1
    try:
        yield str(_SHARED["dsn"])
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["stack"].close()
            _SHARED["stack"] = _SHARED["dsn"] = None


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
