"""The live tail: events as ingest makes them durable, streamed to the console.

Ingest hands each request's events to :meth:`EventTail.offer` (through
``tessera.observability.metrics.on_ingest``). With nobody watching that costs
one comparison; with watchers it keeps a reference to the request's events in a
bounded ring. Each server-sent-event stream turns at most
``MAX_PER_BATCH`` events of each request into short summaries, so a busy ingest
cannot make the console the bottleneck.

The tail shows what this API process ingested; with several API processes
each console shows its own.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from tessera.events.envelope import iso_time

RING = 256
"""Requests kept for streams that fall behind."""
MAX_PER_BATCH = 5
STREAM_SECONDS = 15.0
"""A stream ends after this long and the browser reconnects, so shutdowns never wait on it."""
HEARTBEAT_SECONDS = 5.0
POLL_SECONDS = 0.2


class EventTail:
    def __init__(self) -> None:
        self.watchers = 0
        self.seq = 0
        self._ring: collections.deque[tuple[int, Sequence[Any]]] = collections.deque(maxlen=RING)

    def offer(self, events: Sequence[Any]) -> None:
        if not self.watchers:
            return
        self.seq += 1
        self._ring.append((self.seq, events))

    def since(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Summaries of what arrived after ``seq``, and the new position."""
        out: list[dict[str, Any]] = []
        last = seq
        for s, events in self._ring:
            if s <= seq:
                continue
            last = s
            total = len(events)
            for event in list(events)[:MAX_PER_BATCH]:
                out.append(summary(event))
            if total > MAX_PER_BATCH:
                out.append({"more": total - MAX_PER_BATCH})
        return last, out

    async def wait(self, seq: int, timeout: float) -> None:
        """Until something newer than ``seq`` arrives, or ``timeout``.

        Polls, so that no state is bound to one event loop.
        """
        deadline = time.monotonic() + timeout
        while self.seq == seq and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)

    async def stream(self, seconds: float = STREAM_SECONDS) -> AsyncIterator[bytes]:
        """Server-sent events: ``event: ingest`` with a JSON list of summaries."""
        self.watchers += 1
        try:
            position = self.seq
            yield b"retry: 1000\n\n"
            deadline = time.monotonic() + seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                await self.wait(position, min(HEARTBEAT_SECONDS, left))
                position, items = self.since(position)
                if items:
                    yield b"event: ingest\ndata: " + orjson.dumps(items) + b"\n\n"
                else:
                    yield b": keep-alive\n\n"
        finally:
            self.watchers -= 1


def summary(event: Any) -> dict[str, Any]:
    identifiers = [f"{t}:{v}" for t, v in (event.identifiers or [])[:3]]
    return {
        "uid": event.uid,
        "id": str(event.id)[:80],
        "type": str(event.type)[:120],
        "source": event.source_name,
        "time": iso_time(event.time),
        "received_at": iso_time(event.received_at),
        "identifiers": identifiers,
    }


TAIL = EventTail()
