"""``tessera migrate`` and the activation commands with a PostgreSQL store: the versioned
activation and journey migrations are applied, and ``tessera subscriptions
pause`` / ``journeys list`` act on the shared state, not on a local file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.activation.state import migrations
from tessera.activation.state.postgres import HISTORY as ACT_HISTORY
from tessera.activation.state.postgres import MIGRATIONS as ACT_MIGRATIONS
from tessera.activation.state.postgres import PostgresActivationState
from tessera.journeys.state.postgres import HISTORY as JRN_HISTORY
from tessera.journeys.state.postgres import MIGRATIONS as JRN_MIGRATIONS
from tessera.store.postgres import parse_url
from tests.contract.activation_state_contract import sub
from tests.contract.pg_schema import pg_url

__all__ = ["pg_url"]

pytestmark = pytest.mark.services


def tessera(data: Path, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_STORE_URL": store_url, "COLUMNS": "200"}
    env.pop("TESSERA_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "tessera", *args, "--data-dir", str(data)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_migrate_then_pause_on_the_shared_state(tmp_path: Path, pg_url: str) -> None:
    done = tessera(tmp_path / "a", pg_url, "migrate")
    assert done.returncode == 0, done.stderr
    assert "activation and journey state are up to date" in done.stdout
    conninfo, settings = parse_url(pg_url, {})
    assert migrations.applied(conninfo, settings.schema, ACT_HISTORY) == [
        m.version for m in ACT_MIGRATIONS]
    assert migrations.applied(conninfo, settings.schema, JRN_HISTORY) == [
        m.version for m in JRN_MIGRATIONS]

    missing = tessera(tmp_path / "b", pg_url, "subscriptions", "pause", "crm")
    assert missing.returncode == 1 and "no subscription 'crm'" in missing.stderr
    state = PostgresActivationState(pg_url)
    try:
        state.create(sub("crm"), "api", True, 1.0)  # as an API node on another host would
        paused = tessera(tmp_path / "c", pg_url, "subscriptions", "pause", "crm")
        assert paused.returncode == 0, paused.stderr
        assert state.paused() == {"crm"}
    finally:
        state.close()
    listed = tessera(tmp_path / "d", pg_url, "journeys", "list")
    assert listed.returncode == 0, listed.stderr
    assert not any((tmp_path / d / "activation.db").exists() for d in "abcd")
