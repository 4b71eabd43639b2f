from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    # about personalization, not power cuts: skip the fsyncs
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


# the demo installation over HTTP with both processors (test_api.py), for every module here
from tests.personalization.test_api import api  # noqa: E402, F401
