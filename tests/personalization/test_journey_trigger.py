"""A journey triggered by ``segment.entered``: audiences drive activation like any event."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tessera.config import default_config, parse_config
from tessera.events.envelope import Event
from tessera.personalization.service import PersonalizationService
from tests.activation.helpers import running, wait_for


async def test_entering_an_audience_starts_a_journey(tmp_path: Path) -> None:
    raw = default_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw["journeys"] = [{
        "name": "upgrade_after_tows",
        "trigger": {"types": ["segment.entered"],
                    "attributes": {"tesserasegment": "frequent_tows"}},
        "steps": [{"id": "offer", "action": {"emit": {"type": "x.upgrade_offer", "data": {
            "member": "{{ profile.identifiers.member_number.0 }}",
            "segment": "{{ trigger.data.segment }}"}}}}],
    }]
    config = parse_config(raw)
    async with running(config, tmp_path / "data") as h:
        service = PersonalizationService.from_runtime(h.runtime, tick=0.05)
        task = asyncio.create_task(service.run())
        try:
            for _ in range(2):
                await h.send({"member_number": "M-42", "resolution": "towed"},
                             "com.example.roadservice.ticket.status_changed",
                             source="roadservice")
            offers: list[Event] = []

            async def collect() -> None:
                while batch := await h.runtime.bus.fetch("derived", "test-offers", 100, 0.01):
                    offers.extend(e for e in (Event.from_json(d.payload) for d in batch)
                                  if e.type == "x.upgrade_offer")
                    await h.runtime.bus.ack(batch)

            deadline = time.monotonic() + 30
            while not offers and time.monotonic() < deadline:
                await collect()
                await asyncio.sleep(0.05)
            assert [o.data for o in offers] == [{"member": "M-42", "segment": "frequent_tows"}]
            await wait_for(lambda: service.stats.entered >= 2, what="entries counted")
        finally:
            service.stop()
            await task
