"""A runtime with the profiles worker and the activation processor running in the background."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tessera.activation.service import ActivationService
from tessera.bus.base import Message
from tessera.config import TesseraConfig, default_config, parse_config
from tessera.events.envelope import Event
from tessera.runtime import Runtime

_ids = itertools.count()


def config_with(**sections: Any) -> TesseraConfig:
    """The demo configuration plus ``subscriptions``, ``journeys``, ``destinations``."""
    raw = default_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw.update(sections)
    return parse_config(raw)


def webhook(url: str, secret: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "webhook", "url": url, **extra}
    if secret:
        out["secret"] = secret
    return out


FAST_RETRY = {"initial_backoff": 0.02, "max_backoff": 0.1, "max_attempts": 100,
              "jitter": 0.5}


class Harness:
    def __init__(self, runtime: Runtime, activation: ActivationService) -> None:
        self.runtime = runtime
        self.activation = activation

    def event(self, data: dict[str, Any], type_: str, source: str = "web",
              event_id: str | None = None, **attrs: Any) -> Event:
        now = time.time()
        return Event(id=event_id or f"ev{next(_ids)}", source=f"test/{source}", type=type_,
                     time=now, received_at=now, source_name=source, data=data,
                     identifiers=self.runtime.extractor.extract({"data": data}), **attrs)

    async def publish(self, *events: Event) -> None:
        await self.runtime.bus.publish(
            "events", [Message(e.uid, e.partition_key, e.to_json()) for e in events])

    async def send(self, data: dict[str, Any], type_: str, source: str = "web",
                   **attrs: Any) -> Event:
        event = self.event(data, type_, source, **attrs)
        await self.publish(event)
        return event


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(config: TesseraConfig, data: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    """Profiles worker and activation processor as background tasks over one runtime."""
    runtime = Runtime(config, data)
    await runtime.start()
    worker = runtime.worker()
    worker.config = worker.config.model_copy(update={"batch_size": 100})
    kwargs.setdefault("refresh_seconds", 0.1)
    activation = ActivationService.from_runtime(runtime, **kwargs)
    tasks = [asyncio.create_task(worker.run(idle_timeout=0.05)),
             asyncio.create_task(activation.run())]
    try:
        await wait_for(lambda: len(activation.running) + len(activation.errors)
                       >= len(config.subscriptions),
                       what="subscriptions to start")
        yield Harness(runtime, activation)
    finally:
        worker.stop()
        activation.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.close()
        activation.state.close()
