"""A Tessera deployment of real processes: API processes and workers on NATS + PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from tests.processes import TesseraProcess, free_port
from tests.scaleout.workload import READ


class Deployment:
    """``tessera serve --no-worker`` and ``tessera worker`` processes sharing a bus and a store."""

    def __init__(self, root: Path, bus_url: str, store_url: str, batch_size: int = 500,
                 max_attempts: int = 5) -> None:
        self.root = root
        config = root / "tessera.yaml"
        demo = resources.files("tessera").joinpath("demo_config.yaml").read_text()
        config.write_text(demo + f"\nprocessor:\n  batch_size: {batch_size}\n"
                          f"  max_attempts: {max_attempts}\n  retry_backoff_seconds: 0.05\n")
        self.config = config
        self.env = {"TESSERA_BUS_URL": bus_url, "TESSERA_STORE_URL": store_url,
                    "TESSERA_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        self.processes: list[TesseraProcess] = []
        self._n = 0

    def _data(self, name: str) -> Path:
        self._n += 1
        return self.root / f"{name}{self._n}"

    def api(self) -> TesseraProcess:
        p = TesseraProcess(["serve", "--no-worker"], self._data("api"), env=self.env,
                           port=free_port())
        self.processes.append(p)
        return p.start()

    def worker(self, *args: str) -> TesseraProcess:
        p = TesseraProcess(["worker", *args], self._data("worker"), env=self.env)
        self.processes.append(p)
        return p.start()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``tessera ARGS`` with the deployment's URLs and configuration."""
        return subprocess.run([sys.executable, "-m", "tessera", *args,
                               "--data-dir", str(self._data("cli"))],
                              env={**os.environ, **self.env, "COLUMNS": "200"},
                              capture_output=True, text=True, timeout=timeout)

    def start(self, workers: int, *worker_args: str,
              claimed: bool = True) -> tuple[TesseraProcess, list[TesseraProcess]]:
        """An API process and ``workers`` workers, booting at the same time.

        With ``claimed``, waits until every worker owns partitions.
        """
        started = [self.worker(*worker_args) for _ in range(workers)]
        api = self.api()
        if claimed:
            for w in started:
                wait_log(w, "nats.partition_claimed", timeout=90)
        return api, started

    def stop_all(self) -> None:
        for p in reversed(self.processes):
            try:
                p.stop()
            except Exception:
                p.kill9()


def log_lines(process: TesseraProcess) -> list[dict[str, Any]]:
    out = []
    for line in process.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def wait_log(process: TesseraProcess, event: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(process):
            if line.get("event") == event:
                return line
        assert process.process is not None
        if process.process.poll() is not None:
            raise AssertionError(f"{process.args} exited:\n{process.log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"no {event!r} in the log after {timeout}s:\n{process.log.read_text()}")


def worker_stats(process: TesseraProcess) -> dict[str, Any]:
    """The counters a worker logs when it stops gracefully."""
    for line in log_lines(process):
        if line.get("event") == "worker.stopped":
            return line
    raise AssertionError(f"the worker did not log its stop:\n{process.log.read_text()}")


def lag(api_url: str) -> int:
    r = httpx.get(f"{api_url}/v1/consumers", headers=READ, timeout=10)
    assert r.status_code == 200, r.text
    return int(next(c["lag"] for c in r.json() if c["group"] == "profiles"))


def wait_caught_up(api_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: int | str = "?"
    while time.monotonic() < deadline:
        try:
            last = lag(api_url)
            if last == 0:
                return
        except (httpx.HTTPError, AssertionError) as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise AssertionError(f"lag still {last} after {timeout}s")
