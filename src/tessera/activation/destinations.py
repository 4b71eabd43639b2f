"""Destinations: where a subscription's messages go.

A :class:`Sender` sends one message and either returns (delivered) or raises
:class:`DeliveryFailed`, saying whether trying again can help. Retries, order
and dead letters are the delivery runner's business, not the sender's.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yarl

from tessera import __version__
from tessera.activation import signing
from tessera.activation.model import (
    FileDestination,
    PythonDestination,
    WebhookDestination,
)

ENTRY_POINT_GROUP = "tessera.destinations"
RETRYABLE_4XX = {408, 409, 425, 429}


class DeliveryFailed(Exception):
    def __init__(self, error: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(error)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class PermanentError(Exception):
    """Raise from a Python destination to dead-letter the message at once (no retries)."""


@dataclass(slots=True)
class Outgoing:
    msg_id: str
    """Stable across retries (``webhook-id``): receivers deduplicate by it."""
    body: dict[str, Any]
    raw: bytes
    profile_id: str | None = None


class Sender(abc.ABC):
    @abc.abstractmethod
    async def send(self, message: Outgoing) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class WebhookSender(Sender):
    """HTTP POST of the structured CloudEvent, signed per Standard Webhooks.

    The client is aiohttp's: its connection pool costs next to nothing per
    request. httpx's pool, which this replaced, polled every pooled connection's
    socket on every request and spent milliseconds of CPU per webhook at 64
    connections (the worker's event loop saturated below 300 webhooks a second).
    """

    #: how much of an error response's body is kept for the error message
    EXCERPT_BYTES = 2048

    def __init__(self, config: WebhookDestination) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._url = yarl.URL(config.url)  # parsed once, not per request

    def _client(self) -> aiohttp.ClientSession:
        # created on first use: an aiohttp session belongs to the running event loop
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_concurrency, limit_per_host=self.config.max_concurrency,
                use_dns_cache=True, enable_cleanup_closed=True)
            # the headers every request carries are the session's defaults, merged once;
            # no cookie jar: a webhook receiver's cookies mean nothing to the next request
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False,
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"content-type": "application/cloudevents+json",
                         "user-agent": f"tessera/{__version__}", **self.config.headers})
        return self._session

    async def send(self, message: Outgoing) -> None:
        headers = signing.headers(self.config.secret, message.msg_id, message.raw)
        try:
            async with self._client().post(self._url, data=message.raw, headers=headers,
                                           allow_redirects=False) as response:
                status = response.status
                if 200 <= status < 300:
                    await response.read()  # the connection goes back to the pool
                    return
                excerpt = (await response.content.read(self.EXCERPT_BYTES)).decode(
                    "utf-8", "replace")[:200].replace("\n", " ")
                retry_after = _retry_after(response.headers.get("retry-after"))
        except TimeoutError:
            raise DeliveryFailed(f"timeout after {self.config.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            # "Connect call failed" alone does not say why: name the cause (refused, ...)
            cause = os.strerror(exc.errno) if exc.errno else str(exc.os_error)
            raise DeliveryFailed(
                f"cannot connect to {exc.host}:{exc.port}: {cause}") from None
        except aiohttp.ClientError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        error = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        retryable = status >= 500 or status in RETRYABLE_4XX or 300 <= status < 400
        raise DeliveryFailed(error, retryable=retryable, retry_after=retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def load_callable(config: PythonDestination) -> Callable[..., Any]:
    if config.entry_point is not None:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP)
                 if ep.name == config.entry_point]
        if not found:
            raise LookupError(f"no entry point {config.entry_point!r} in the group "
                              f"{ENTRY_POINT_GROUP!r} (is its package installed?)")
        target = found[0].load()
    else:
        assert config.function is not None
        module, _, attr = config.function.partition(":")
        if not attr:
            raise LookupError(f"function {config.function!r}: use 'package.module:function'")
        target = getattr(importlib.import_module(module), attr)
    if not callable(target):
        raise LookupError(f"{config.entry_point or config.function!r} is not callable")
    return target


class PythonSender(Sender):
    """Calls ``fn(event: dict, options: dict)``; a coroutine function is awaited, a plain
    one runs in a thread. An exception fails the attempt; :class:`PermanentError`
    dead-letters at once."""

    def __init__(self, config: PythonDestination) -> None:
        self.config = config
        self.fn = load_callable(config)
        self.is_async = inspect.iscoroutinefunction(self.fn)

    async def send(self, message: Outgoing) -> None:
        try:
            if self.is_async:
                await self.fn(message.body, self.config.options)
            else:
                result = await asyncio.to_thread(self.fn, message.body, self.config.options)
                if inspect.isawaitable(result):
                    await result
        except PermanentError as exc:
            raise DeliveryFailed(f"PermanentError: {exc}", retryable=False) from None
        except Exception as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None


class JsonlSender(Sender):
    """Appends one JSON line per message and flushes it to the OS before acknowledging."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the sender's life

    def _write(self, line: bytes) -> None:
        with self._lock:
            self._file.write(line)
            self._file.flush()

    async def send(self, message: Outgoing) -> None:
        try:
            await asyncio.to_thread(self._write, message.raw + b"\n")
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self.path}: {exc.strerror}") from None

    async def close(self) -> None:
        with self._lock:
            os.fsync(self._file.fileno())
            self._file.close()


class ParquetSender(Sender):
    """Collects messages for ``flush_seconds`` and writes them as one Parquet file in a
    directory; a message is acknowledged once its file is written (with ``pyarrow``).
    """

    def __init__(self, directory: Path, flush_seconds: float) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise LookupError(
                "the parquet file sink needs pyarrow (pip install pyarrow)"
            ) from None
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_seconds = flush_seconds
        self._rows: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._count = 0

    async def send(self, message: Outgoing) -> None:
        body = message.body
        self._rows.append({
            "msg_id": message.msg_id,
            "id": body.get("id"),
            "source": body.get("source"),
            "type": body.get("type"),
            "time": body.get("time"),
            "profile_id": message.profile_id,
            "cloudevent": message.raw.decode(),
        })
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())
        await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_seconds)
        await self.flush()

    async def flush(self) -> None:
        rows, waiters = self._rows, self._waiters
        self._rows, self._waiters = [], []
        if not rows:
            return
        self._count += 1
        name = f"part-{int(time.time() * 1000)}-{os.getpid()}-{self._count}.parquet"
        path = self.directory / name
        try:
            await asyncio.to_thread(_write_parquet, path, rows)
        except Exception as exc:
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(DeliveryFailed(f"cannot write {path}: {exc}"))
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        await self.flush()


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def build_sender(
    config: WebhookDestination | PythonDestination | FileDestination, data_dir: Path
) -> Sender:
    if isinstance(config, WebhookDestination):
        return WebhookSender(config)
    if isinstance(config, PythonDestination):
        return PythonSender(config)
    path = Path(config.path)
    if not path.is_absolute():
        path = data_dir / path
    if config.format == "parquet":
        return ParquetSender(path, config.flush_seconds)
    return JsonlSender(path)


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)
