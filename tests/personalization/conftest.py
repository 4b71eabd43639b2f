from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    # about personalization, not power cuts: skip the fsyncs
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
