"""The timeline form of an event: its times formatted as before, a shared receive time once."""

from __future__ import annotations

import random

import pytest

from tessera.events import envelope
from tessera.events.envelope import Event, iso_time


def event(n: int, received_at: float) -> Event:
    return Event(id=f"e{n}", source="test", type="t", time=1_700_000_000.5 + n,
                 received_at=received_at, source_name="web")


def test_a_receive_time_shared_by_events_is_formatted_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def counting(ts: float) -> str:
        calls.append(ts)
        return iso_time(ts)

    monkeypatch.setattr(envelope, "iso_time", counting)
    received = 1_795_970_055.0747283 + random.random()  # not formatted before
    out = [event(n, received).to_cloudevent() for n in range(50)]
    assert calls.count(received) == 1
    assert {o["tesserareceivedat"] for o in out} == {iso_time(received)}
    assert [o["time"] for o in out] == [iso_time(1_700_000_000.5 + n) for n in range(50)]


def test_receive_times_format_as_iso_time_does() -> None:
    for ts in (0.0, 1e-7, 0.9999995, 1_735_689_838.7, 1_795_970_055.0747283, -0.5):
        assert event(0, ts).to_cloudevent()["tesserareceivedat"] == iso_time(ts)
