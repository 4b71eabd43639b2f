"""`tessera serve` runs the personalization processor in its worker: a member towed twice
enters the audience and gets the offer, with no step driven by the test."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tessera.events.envelope import iso_time
from tests.processes import TesseraProcess, free_port

pytestmark = pytest.mark.slow
KEY = {"Authorization": "Bearer rk_personalize_123"}


def send(url: str, key: str, type_: str, event_id: str, data: dict[str, object]) -> None:
    event = {"specversion": "1.0", "id": event_id, "source": "test", "type": type_,
             "time": iso_time(time.time()), "data": data}
    response = httpx.post(f"{url}/v1/events", json=event, timeout=10,
                          headers={"Authorization": f"Bearer {key}",
                                   "Content-Type": "application/cloudevents+json"})
    assert response.status_code in (200, 202), response.text


def test_the_worker_process_maintains_segments_and_decisions(tmp_path: Path) -> None:
    server = TesseraProcess(["serve"], tmp_path / "data", port=free_port(),
                            env={"TESSERA_SQLITE_SYNCHRONOUS": "OFF"}).start()
    try:
        url = server.url
        send(url, "wk_crm_123", "com.example.crm.contact.updated", "c1",
             {"member_number": "M-9", "consent": {"email": True}})
        for i in range(2):
            send(url, "wk_roadservice_123", "com.example.roadservice.ticket.status_changed",
                 f"t{i}", {"member_number": "M-9", "resolution": "towed"})
        deadline = time.monotonic() + 30
        segments: list[str] = []
        while time.monotonic() < deadline:
            response = httpx.get(f"{url}/v1/profiles/member_number:M-9/segments", headers=KEY)
            if response.status_code == 200:
                segments = [s["segment"] for s in response.json()["segments"]]
                if "frequent_tows" in segments:
                    break
            time.sleep(0.1)
        assert "frequent_tows" in segments, server.log.read_text()
        nba = httpx.get(f"{url}/v1/profiles/member_number:M-9/next-best-action",
                        params={"channel": "contact_center"}, headers=KEY).json()
        assert [a["action"] for a in nba["actions"]] == ["roadside_plus_upgrade"]

        # an audience saved through the API reaches the running worker process, which
        # fills it in for the existing member; deleting it makes the member exit
        admin = {"Authorization": "Bearer ak_admin_123"}
        saved = httpx.post(f"{url}/v1/audiences", headers=admin, timeout=10, json={
            "name": "towed_twice", "rule": {"path": "computed.roadside_tows_12m", "gte": 2}})
        assert saved.status_code == 201, saved.text
        assert "towed_twice" in wait_for_segments(url, "towed_twice", True, server.log)
        httpx.delete(f"{url}/v1/audiences/towed_twice", headers=admin, timeout=10)
        assert "towed_twice" not in wait_for_segments(url, "towed_twice", False, server.log)
    finally:
        server.stop()


def wait_for_segments(url: str, name: str, present: bool, log: Path,
                      timeout: float = 5.0) -> list[str]:
    """M-9's segments once ``name`` is among them (or no longer is), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/v1/profiles/member_number:M-9/segments", headers=KEY)
        segments = [s["segment"] for s in response.json()["segments"]]
        if (name in segments) is present or time.monotonic() > deadline:
            assert (name in segments) is present, log.read_text()[-3000:]
            return segments
        time.sleep(0.05)
