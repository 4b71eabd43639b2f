"""Publishers: queue events, send them in batches to Tessera's ingest API, retry with backoff.

``Publisher`` is for synchronous code (a Django view, a script), ``AsyncPublisher``
for asyncio services. Both batch (``batch_size`` events per request, or
whatever is queued at ``flush()``), retry what can succeed later (connection
errors, timeouts, 429 and 5xx) with exponential backoff and jitter, and never
retry what cannot (400: the answer names every bad event; 401/403: the key).
Because every event keeps its id across retries and Tessera deduplicates by
(source, id), a retry after a lost answer never makes a duplicate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from tessera.publish.envelope import entity_change_event, process_step_event

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class PublishError(Exception):
    """Tessera refused the events (not worth retrying), or retries ran out."""

    def __init__(self, message: str, status: int | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []


class _Base:
    def __init__(self, url: str, write_key: str, source: str, *, batch_size: int = 100,
                 max_retries: int = 5, backoff_seconds: float = 0.2,
                 max_backoff_seconds: float = 10.0, timeout_seconds: float = 10.0) -> None:
        if batch_size < 1 or batch_size > 5000:
            raise ValueError("batch_size must be 1..5000")
        self.url = url.rstrip("/") + "/v1/events"
        self.source = source
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.headers = {"Authorization": f"Bearer {write_key}",
                        "Content-Type": BATCH_CONTENT_TYPE}
        self.queue: list[dict[str, Any]] = []
        self.sent = 0
        self.attempts = 0

    def _entity(self, type: str, entity: str, entity_id: str, op: str,
                **kw: Any) -> dict[str, Any]:
        return entity_change_event(type, kw.pop("source", None) or self.source, entity,
                                   entity_id, op, **kw)

    def _step(self, type: str, process: str, step: str, instance_id: str,
              data: Mapping[str, Any] | None, **kw: Any) -> dict[str, Any]:
        return process_step_event(type, kw.pop("source", None) or self.source, process, step,
                                  instance_id, data, **kw)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff_seconds)
            except ValueError:
                pass
        base = min(self.backoff_seconds * 2 ** attempt, self.max_backoff_seconds)
        return base * (0.5 + random.random() / 2)

    def _outcome(self, response: httpx.Response | None, error: Exception | None,
                 attempt: int) -> tuple[bool, float]:
        """(done, delay before retrying); raises when retrying cannot help."""
        if response is not None and response.status_code < 300:
            return True, 0.0
        if response is not None and response.status_code not in RETRYABLE_STATUS:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise PublishError(
                f"Tessera refused the batch ({response.status_code}): "
                f"{body.get('message', response.text[:200])}",
                response.status_code, body.get("errors"))
        if attempt >= self.max_retries:
            what = f"status {response.status_code}" if response is not None else repr(error)
            raise PublishError(f"giving up after {attempt + 1} attempts: {what}",
                               response.status_code if response is not None else None)
        return False, self._delay(attempt, response.headers.get("retry-after")
                                  if response is not None else None)


class Publisher(_Base):
    """Synchronous publisher; use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, write_key: str, source: str, *,
                 client: httpx.Client | None = None, **kw: Any) -> None:
        super().__init__(url, write_key, source, **kw)
        self._own = client is None
        self.client = client or httpx.Client(timeout=self.timeout_seconds)

    def publish(self, event: dict[str, Any]) -> str:
        """Queue a CloudEvent (a dict in structured mode); sends when a batch is full."""
        self.queue.append(event)
        if len(self.queue) >= self.batch_size:
            self.flush()
        return str(event["id"])

    def publish_entity_change(self, type: str, entity: str, entity_id: str, op: str,
                              **kw: Any) -> str:
        """Queue an entity change: ``before``/``after``/``version``/``notification``/``id``..."""
        return self.publish(self._entity(type, entity, entity_id, op, **kw))

    def publish_process_step(self, type: str, process: str, step: str, instance_id: str,
                             data: Mapping[str, Any] | None = None, **kw: Any) -> str:
        return self.publish(self._step(type, process, step, instance_id, data, **kw))

    def flush(self) -> int:
        """Send everything queued; the number of events sent."""
        total = 0
        while self.queue:
            batch = self.queue[: self.batch_size]
            self.send_batch(batch)
            del self.queue[: len(batch)]
            total += len(batch)
        return total

    def send_batch(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps(batch)
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            response, error = None, None
            try:
                response = self.client.post(self.url, content=body, headers=self.headers)
            except httpx.TransportError as exc:
                error = exc
            done, delay = self._outcome(response, error, attempt)
            if done:
                self.sent += len(batch)
                return
            time.sleep(delay)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._own:
                self.client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher(_Base):
    """Asyncio publisher; ``async with`` it, or await :meth:`aclose`."""

    def __init__(self, url: str, write_key: str, source: str, *,
                 client: httpx.AsyncClient | None = None, **kw: Any) -> None:
        super().__init__(url, write_key, source, **kw)
        self._own = client is None
        self.client = client or httpx.AsyncClient(timeout=self.timeout_seconds)
        self._lock = asyncio.Lock()

    async def publish(self, event: dict[str, Any]) -> str:
        self.queue.append(event)
        if len(self.queue) >= self.batch_size:
            await self.flush()
        return str(event["id"])

    async def publish_entity_change(self, type: str, entity: str, entity_id: str, op: str,
                                    **kw: Any) -> str:
        return await self.publish(self._entity(type, entity, entity_id, op, **kw))

    async def publish_process_step(self, type: str, process: str, step: str, instance_id: str,
                                   data: Mapping[str, Any] | None = None, **kw: Any) -> str:
        return await self.publish(self._step(type, process, step, instance_id, data, **kw))

    async def flush(self) -> int:
        total = 0
        async with self._lock:  # one batch in flight: events leave in the order queued
            while self.queue:
                batch = self.queue[: self.batch_size]
                await self.send_batch(batch)
                del self.queue[: len(batch)]
                total += len(batch)
        return total

    async def send_batch(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps(batch)
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            response, error = None, None
            try:
                response = await self.client.post(self.url, content=body, headers=self.headers)
            except httpx.TransportError as exc:
                error = exc
            done, delay = self._outcome(response, error, attempt)
            if done:
                self.sent += len(batch)
                return
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        try:
            await self.flush()
        finally:
            if self._own:
                await self.client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
