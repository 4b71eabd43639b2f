"""Nothing accepted is lost: restarts and kill -9 with real processes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.processes import TesseraProcess, free_port

pytestmark = pytest.mark.slow

WRITE = {"Authorization": "Bearer wk_crm_123",
         "Content-Type": "application/cloudevents-batch+json"}
READ = {"Authorization": "Bearer rk_read_123"}


def batch(start: int, n: int) -> list[dict[str, object]]:
    return [{"specversion": "1.0", "id": f"ev-{i}", "source": "crm", "type":
             "com.example.crm.contact.updated",
             "data": {"email": f"person{i % 50}@example.com", "traits": {"n": i}}}
            for i in range(start, start + n)]


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def event_total(url: str) -> int:
    total = 0
    for p in range(50):
        r = httpx.get(f"{url}/v1/profiles/email:person{p}@example.com", headers=READ)
        if r.status_code == 200:
            total += r.json()["event_count"]
    return total


def test_events_accepted_just_before_kill9_are_processed_after_restart(tmp_path: Path) -> None:
    port = free_port()
    api = TesseraProcess(["serve", "--no-worker"], tmp_path, port=port).start()
    try:
        accepted = 0
        for start in range(0, 500, 100):
            r = httpx.post(f"{api.url}/v1/events", headers=WRITE, json=batch(start, 100))
            assert r.status_code == 202
            accepted += r.json()["accepted"]
        api.kill9()  # right after the last 202: nothing was processed yet
    finally:
        api.stop()
    assert accepted == 500
    server = TesseraProcess(["serve"], tmp_path, port=port).start()
    try:
        wait_for(lambda: event_total(server.url) == 500)
        r = httpx.get(f"{server.url}/v1/stats", headers=READ)
        assert r.json()["store"]["events_applied"] == 500
    finally:
        server.stop()


def test_worker_killed_mid_stream_applies_every_event_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    api = TesseraProcess(["serve", "--no-worker"], tmp_path, port=port).start()
    worker = TesseraProcess(["worker"], tmp_path).start()
    try:
        for start in range(0, 3000, 100):
            r = httpx.post(f"{api.url}/v1/events", headers=WRITE, json=batch(start, 100))
            assert r.status_code == 202
        # kill the worker while it is (very likely) in the middle of the stream
        wait_for(lambda: httpx.get(f"{api.url}/v1/stats", headers=READ)
                 .json()["store"]["events_applied"] > 0, timeout=30)
        worker.kill9()
        worker = TesseraProcess(["worker"], tmp_path).start()
        wait_for(lambda: httpx.get(f"{api.url}/v1/stats", headers=READ)
                 .json()["lag"]["profiles"] == 0, timeout=60)
        stats = httpx.get(f"{api.url}/v1/stats", headers=READ).json()
        assert stats["store"]["events_applied"] == 3000
        assert stats["store"]["profiles"] == 50
        assert event_total(api.url) == 3000  # each event counted once, none twice
    finally:
        worker.stop()
        api.stop()


def test_restart_keeps_profiles_and_events(tmp_path: Path) -> None:
    port = free_port()
    server = TesseraProcess(["serve"], tmp_path, port=port).start()
    try:
        r = httpx.post(f"{server.url}/v1/events", headers=WRITE, json=batch(0, 100))
        assert r.status_code == 202
        wait_for(lambda: event_total(server.url) == 100)
        before = httpx.get(f"{server.url}/v1/profiles/email:person7@example.com",
                           headers=READ).json()
    finally:
        server.stop()
    server = TesseraProcess(["serve"], tmp_path, port=port).start()
    try:
        after = httpx.get(f"{server.url}/v1/profiles/email:person7@example.com",
                          headers=READ).json()
        assert after == before
        r = httpx.post(f"{server.url}/v1/events", headers=WRITE, json=batch(0, 100))
        assert r.json() == {"accepted": 0, "duplicates": 100, "ids": [f"ev-{i}" for i in
                                                                      range(100)]}
        events = httpx.get(f"{server.url}/v1/profiles/email:person7@example.com/events",
                           headers=READ).json()
        assert len(events["events"]) == 2
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_serve_never_leaves_its_workers_behind(tmp_path: Path, sig: str) -> None:
    import os
    import signal

    from tessera.cli import PROCESSORS

    server = TesseraProcess(["serve"], tmp_path, port=free_port()).start()
    try:
        assert server.process is not None
        # one worker process per processor
        wait_for(lambda: len(_children(server.process.pid)) == len(PROCESSORS))  # type: ignore[union-attr]
        workers = _children(server.process.pid)
        commands = sorted(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode()
                          for pid in workers)
        assert commands == sorted(PROCESSORS)  # each runs with --processors NAME
        os.kill(server.process.pid, getattr(signal, sig))  # the server alone, not its group
        server.process.wait(15)
        wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=15)
    finally:
        server.stop()


def test_a_processor_with_nothing_to_do_keeps_its_process(tmp_path: Path) -> None:
    """No journeys, subscriptions or audiences configured: the activation and
    personalization processes idle; their supervisor must not restart them over and over."""
    config = tmp_path / "tessera.yaml"
    config.write_text("sources:\n  - {name: crm, write_key: wk_crm_123}\n"
                      "api_keys:\n  - {key: rk_read_123, scopes: ['profiles:read']}\n")
    server = TesseraProcess(["serve", "--config", str(config)], tmp_path,
                            port=free_port()).start()
    try:
        assert server.process is not None
        pid = server.process.pid
        wait_for(lambda: len(_children(pid)) == 3)
        time.sleep(4.0)  # the supervisor looks every second
        assert "restarting" not in server.log.read_text()
    finally:
        server.stop()
