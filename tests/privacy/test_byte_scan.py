"""The erasure target, end to end on real processes: after erasing Jane, a byte scan of
every file of the installation (store, bus with its dead letters, activation state,
warehouse and Parquet files, and the server's logs) finds none of her identifiers or
trait values, while Bob's data is still there to be found."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tessera.config import DEFAULT_CONFIG_FILE
from tests.privacy.people import (
    ADMIN,
    BOB_EMAIL,
    JANE_EMAIL,
    JANE_USER,
    JANE_VALUES,
    event,
)
from tests.processes import TesseraProcess, free_port

pytestmark = pytest.mark.slow
CE = {"Content-Type": "application/cloudevents+json"}


def _config(tmp_path: Path) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    # a subscription whose webhook is down: Jane's events end up in the dead letters
    raw["subscriptions"] = [*raw.get("subscriptions", []), {
        "name": "down", "shape": "fat", "filter": {"types": ["com.example.crm.*"]},
        "destination": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook",
                        "timeout": 1},
        "retry": {"max_attempts": 1}, "start": "beginning"}]
    path = tmp_path / "tessera.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _post(url: str, key: str, body: bytes) -> None:
    response = httpx.post(url + "/v1/events", headers={**CE, "Authorization": f"Bearer {key}"},
                          content=body, timeout=10)
    assert response.status_code == 202, response.text


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_after_erasure_no_file_holds_a_byte_of_jane(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(tmp_path)
    port = free_port()
    server = TesseraProcess(["serve", "--config", str(config)], data, port=port).start()
    read = {"Authorization": "Bearer rk_read_123"}
    try:
        url = server.url
        _post(url, "wk_web_123", event("j1", {"email": JANE_EMAIL.upper(), "traits": {
            "name": JANE_VALUES[3], "city": JANE_VALUES[4]}}))
        _post(url, "wk_app_123", event("j2", {"userId": JANE_USER, "phone": "+1 415 555 0199"}))
        _post(url, "wk_crm_123", event("j3", {"userId": JANE_USER, "email": JANE_EMAIL}))
        _post(url, "wk_web_123", event("b1", {"email": BOB_EMAIL, "traits": {"name": "Bob"}}))

        def merged() -> bool:
            r = httpx.get(f"{url}/v1/profiles/email:{JANE_EMAIL}", headers=read)
            return r.status_code == 200 and len(r.json()["identities"]) == 3

        _wait("Jane's profiles to merge", merged)
        _wait("the down webhook's dead letters", lambda: _dead_letters(data) >= 2)
        exported = subprocess.run(
            [sys.executable, "-m", "tessera", "warehouse", "export", "--config", str(config),
             "--data-dir", str(data)], capture_output=True, timeout=120)
        assert exported.returncode == 0, exported.stderr.decode()
        assert JANE_EMAIL.encode() in (data / "warehouse.duckdb").read_bytes()

        erased = httpx.post(f"{url}/v1/privacy/erasure", headers=ADMIN,
                            json={"identifier": f"user_id:{JANE_USER}"}, timeout=60)
        assert erased.status_code == 200, erased.text
        assert erased.json()["warehouse_rows"] > 0 and erased.json()["bus_messages"] >= 3
        _post(url, "wk_crm_123", event("late", {"email": JANE_EMAIL, "traits": {
            "name": JANE_VALUES[3]}}))
        time.sleep(1.5)  # the worker screens the late event, if it got past ingest
        assert httpx.get(f"{url}/v1/profiles/email:{JANE_EMAIL}",
                         headers=read).status_code == 404
    finally:
        server.stop()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.suffix == ".parquet" for p in files)
    found = {}
    for path in files:
        blob = path.read_bytes()
        for value in [*JANE_VALUES, JANE_EMAIL.upper(), "+1 415 555 0199"]:
            if value.encode() in blob:
                found.setdefault(str(path.relative_to(tmp_path)), []).append(value)
    assert found == {}, found
    everything = b"".join(p.read_bytes() for p in files)
    assert BOB_EMAIL.encode() in everything  # the scan sees data that is still there


def _dead_letters(data: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(data / "bus.db")
    try:
        return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    finally:
        conn.close()
