"""Fat delivery of notification events: fetch the entity from its owning service (claim check).

A notification event carries ``{"op", "entity", "id", "version"}``. The
catalog entry of its type declares a resolver: a URL template on the owning
service (``http://membership.internal/members/{id}?version={version}``). The
resolver GETs it with a timeout, retries connection errors, timeouts, 429
and 5xx with backoff, and keeps answers for ``cache_seconds`` (a version in
the URL makes a cached answer exact). The fat event has the fetched entity
as ``after``, ``before`` unknown (``null``) and ``resolved: true``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx

from tessera.catalog.model import EventType
from tessera.catalog.registry import Catalog

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class ResolveError(Exception):
    """The entity could not be fetched (after the retries)."""


class Resolver:
    """Turns notification CloudEvents into fat ones, for subscribers that ask for fat delivery."""

    def __init__(self, catalog: Catalog, client: httpx.AsyncClient | None = None,
                 clock: Any = time.monotonic) -> None:
        self.catalog = catalog
        self._own = client is None
        self.client = client or httpx.AsyncClient()
        self.clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self.fetches = 0
        """HTTP requests made (for tests and metrics)."""

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()

    def url_for(self, spec: EventType, event: dict[str, Any]) -> str:
        assert spec.resolver is not None
        data = event.get("data") or {}
        values = {
            "id": quote(str(data.get("id", "")), safe=""),
            "entity": quote(str(data.get("entity") or spec.entity or ""), safe=""),
            "version": quote(str(data.get("version", "")), safe=""),
            "type": quote(str(event.get("type", "")), safe=""),
        }
        return spec.resolver.url.format(**values)

    async def fatten(self, event: dict[str, Any]) -> dict[str, Any]:
        """The fat form of a notification CloudEvent; other events are returned unchanged."""
        spec = self.catalog.get(str(event.get("type")))
        data = event.get("data")
        if (spec is None or spec.resolver is None or not isinstance(data, dict)
                or "after" in data or "id" not in data):
            return event
        if data.get("op") == "d":
            entity = None  # deleted: nothing to fetch
        else:
            entity = await self.fetch(spec, self.url_for(spec, event))
        fat = {**data, "before": None, "after": entity,
               "changed": None, "resolved": True}
        return {**event, "data": fat}

    async def fetch(self, spec: EventType, url: str) -> Any:
        assert spec.resolver is not None
        cfg = spec.resolver
        now = self.clock()
        hit = self._cache.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(url)
        if pending is not None:  # one request per URL at a time
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[url] = future
        try:
            value = await self._get(url, cfg.timeout_seconds, cfg.retries, cfg.backoff_seconds,
                                    cfg.headers)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._inflight.pop(url, None)
        if cfg.cache_seconds > 0:
            self._cache[url] = (self.clock() + cfg.cache_seconds, value)
            if len(self._cache) > 10_000:
                self._evict()
        future.set_result(value)
        return value

    def _evict(self) -> None:
        now = self.clock()
        for key in [k for k, (until, _) in self._cache.items() if until <= now]:
            del self._cache[key]
        while len(self._cache) > 10_000:
            self._cache.pop(next(iter(self._cache)))

    async def _get(self, url: str, timeout: float, retries: int, backoff: float,
                   headers: dict[str, str]) -> Any:
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
            self.fetches += 1
            try:
                response = await self.client.get(url, timeout=timeout, headers=headers)
            except httpx.TimeoutException:
                last = f"timed out after {timeout} s"
                continue
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise ResolveError(f"{url}: the answer is not JSON") from None
            if response.status_code == 404:
                return None  # gone (deleted since): the fat event says so with after = null
            if response.status_code not in RETRYABLE:
                raise ResolveError(f"{url}: status {response.status_code}")
            last = f"status {response.status_code}"
        raise ResolveError(f"{url}: {last} ({retries + 1} attempts)")
