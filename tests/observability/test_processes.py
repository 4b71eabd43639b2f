"""Metrics of real processes: ``tessera serve`` sums its API and worker processes;
``tessera worker --metrics-port`` serves its own."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import TesseraProcess, free_port

pytestmark = pytest.mark.slow

BATCH = {"Authorization": "Bearer wk_web_123",
         "Content-Type": "application/cloudevents-batch+json"}
FAST = {"TESSERA_SQLITE_SYNCHRONOUS": "OFF"}


def value(text: str, pattern: str) -> float | None:
    match = re.search(r"^" + pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def events(n: int, prefix: str) -> list[dict[str, object]]:
    return [{"specversion": "1.0", "id": f"{prefix}-{i}", "source": "web",
             "type": "com.example.web.page_viewed", "data": {"userId": f"{prefix}-{i}"}}
            for i in range(n)]


def wait_for(url: str, pattern: str, expected: float, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.ConnectError:  # not listening yet
            text = ""
        if value(text, pattern) == expected:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern} never reached {expected}:\n{text[-3000:]}")


def test_serve_metrics_add_up_the_api_and_the_worker(tmp_path: Path) -> None:
    server = TesseraProcess(["serve"], tmp_path / "data", env=FAST, port=free_port()).start()
    try:
        response = httpx.post(server.url + "/v1/events", json=events(7, "s"), headers=BATCH)
        assert response.status_code == 202
        text = wait_for(server.url + "/metrics",
                        r'tessera_processing_events_total\{group="profiles",outcome="applied"\}',
                        7)
        # counted in the API process
        assert value(text, r'tessera_ingest_events_total\{endpoint="/v1/events",'
                           r'outcome="accepted",source="web"\}') == 7
        # counted in the worker process, read from the shared directory
        assert (value(text, r'tessera_processing_batch_duration_seconds_count'
                            r'\{group="profiles"\}') or 0) >= 1
        assert value(text, r'tessera_consumer_lag\{group="profiles",topic="events"\}') == 0
        assert any(p.name.startswith("counter_") for p in (tmp_path / "data" / "metrics").iterdir())
    finally:
        server.stop()


def test_a_worker_alone_serves_its_metrics_on_a_port(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api = TesseraProcess(["serve", "--no-worker"], data, env=FAST, port=free_port()).start()
    try:
        response = httpx.post(api.url + "/v1/events", json=events(5, "w"), headers=BATCH)
        assert response.status_code == 202
        port = free_port()
        worker = TesseraProcess(["worker", "--metrics-port", str(port)], data, env=FAST).start()
        try:
            wait_for(f"http://127.0.0.1:{port}/metrics",
                     r'tessera_processing_events_total\{group="profiles",outcome="applied"\}', 5)
        finally:
            worker.stop()
    finally:
        api.stop()


def test_importing_the_cli_leaves_metrics_mode_open() -> None:
    """`tessera serve` chooses Prometheus multiprocess mode after the CLI is imported:
    nothing imported with the CLI may import prometheus_client first."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, tessera.cli; print('prometheus_client' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_several_api_processes_share_the_port_and_lose_nothing(tmp_path: Path) -> None:
    """``serve --api-processes 2``: two API processes answer on one port; every event
    sent through either is stored once and processed once; the metrics add them up."""
    server = TesseraProcess(["serve", "--api-processes", "2"], tmp_path / "data", env=FAST,
                            port=free_port())
    server.start()
    try:
        assert server.process is not None
        api = [p for p in _children(server.process.pid)
               if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(api) == 2, api
        # a new connection per request, so the kernel spreads them over both processes
        for i in range(40):
            with httpx.Client() as client:
                response = client.post(server.url + "/v1/events",
                                       json=events(5, f"p{i}"), headers=BATCH)
                assert response.status_code == 202, response.text
        text = wait_for(server.url + "/metrics",
                        r'tessera_processing_events_total\{group="profiles",outcome="applied"\}',
                        200, timeout=60)
        assert value(text, r'tessera_ingest_events_total\{endpoint="/v1/events",'
                           r'outcome="accepted",source="web"\}') == 200
        recorded = {f.stem.rsplit("_", 1)[-1] for f in (tmp_path / "data" / "metrics").glob("*.db")}
        assert {str(p) for p in api} <= recorded, (api, recorded)  # both served requests
    finally:
        server.stop()
    assert server.process is not None and server.process.poll() is not None
    assert not [p for p in api if Path(f"/proc/{p}").exists()], "an API process outlived serve"
