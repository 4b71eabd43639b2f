"""The suppression list when the trust records cannot be read: ingest goes on with the
list it last read; the processor stops (its batch is retried) rather than guess."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tessera.events.envelope import Event
from tessera.privacy.records.sqlite import SQLiteRecords
from tessera.privacy.suppression import Suppression, identifier_digest


class Outage(Exception):
    pass


def event(email: str) -> Event:
    now = time.time()
    return Event(id=email, source="test", type="t", time=now, received_at=now,
                 source_name="crm", data={"email": email}, identifiers=[("email", email)])


def erased_list(tmp_path: Path) -> SQLiteRecords:
    records = SQLiteRecords(tmp_path / "trust.db")
    records.suppress([identifier_digest("email", "gone@example.com")], time.time())
    return records


def test_ingest_screens_with_the_last_list_while_the_records_are_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = erased_list(tmp_path)
    ingest = Suppression(records, recheck_seconds=0.0, fail_open=True)
    events = [event("gone@example.com"), event("kept@example.com")]
    assert [e.id for e in ingest.screen(events)] == ["kept@example.com"]

    def down() -> int:
        raise Outage("connection refused")

    monkeypatch.setattr(records, "suppression_version", down)
    assert ingest.due()
    # still screened with the list read before the outage, and no error
    assert [e.id for e in ingest.screen(events)] == ["kept@example.com"]


def test_the_processor_refuses_to_guess_while_the_records_are_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = erased_list(tmp_path)
    processor = Suppression(records)

    def down() -> int:
        raise Outage("connection refused")

    monkeypatch.setattr(records, "suppression_version", down)
    with pytest.raises(Outage):
        processor.screen([event("gone@example.com")])
