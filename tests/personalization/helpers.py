"""A runtime with the profiles processor and the personalization processor, driven step by step."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tessera.bus.base import Message
from tessera.config import TesseraConfig, default_config, parse_config
from tessera.events.envelope import Event
from tessera.personalization.queries import Personalization
from tessera.personalization.service import PersonalizationService
from tessera.runtime import Runtime

_ids = itertools.count()
_groups = itertools.count()
DAY = 86400.0


def config_with(personalization: dict[str, Any]) -> TesseraConfig:
    """The demo configuration with another ``personalization`` section."""
    raw = default_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw["personalization"] = personalization
    return parse_config(raw)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, runtime: Runtime, service: PersonalizationService, clock: Clock) -> None:
        self.runtime = runtime
        self.service = service
        self.clock = clock
        self.reads = Personalization(runtime.config.personalization, runtime.store,
                                     service.state)

    def event(self, data: dict[str, Any], type_: str, source: str = "web",
              at: float | None = None, event_id: str | None = None) -> Event:
        at = self.clock.now if at is None else at
        return Event(id=event_id or f"ev{next(_ids)}", source=f"test/{source}", type=type_,
                     time=at, received_at=at, source_name=source, data=data,
                     identifiers=self.runtime.extractor.extract({"data": data}))

    async def send(self, *events: Event) -> None:
        await self.runtime.bus.publish(
            "events", [Message(e.uid, e.partition_key, e.to_json()) for e in events])

    async def process(self) -> None:
        stats = await self.runtime.worker().run_until_idle()
        assert stats.dead_lettered == 0
        await self.service.run_until_idle()

    async def derived(self, *types: str) -> list[Event]:
        """Events of these types on the derived topic, read with a fresh consumer group."""
        group = f"test-reader-{next(_groups)}"
        out: list[Event] = []
        while True:
            batch = await self.runtime.bus.fetch("derived", group, 500, 0.01)
            if not batch:
                break
            out += [Event.from_json(d.payload) for d in batch]
            await self.runtime.bus.ack(batch)
        return [e for e in out if e.type in types]

    def pid(self, identifier: str) -> str:
        found = self.runtime.store.resolve(identifier)
        assert found is not None, identifier
        return found


@contextlib.asynccontextmanager
async def harness(config: TesseraConfig, data: Path, bus_url: str | None = None,
                  store_url: str | None = None) -> AsyncIterator[Harness]:
    runtime = Runtime(config, data, bus_url=bus_url, store_url=store_url)
    await runtime.start()
    service = PersonalizationService.from_runtime(runtime)
    clock = Clock()
    service.engine.clock = clock
    try:
        yield Harness(runtime, service, clock)
    finally:
        service.state.close()
        await runtime.close()
