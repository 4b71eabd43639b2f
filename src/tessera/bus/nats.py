"""The NATS JetStream bus: durable topics shared by many workers on many machines.

Layout on the server
--------------------
Every name starts with a configurable prefix (``stream_prefix`` for streams and
buckets, ``subject_prefix`` for subjects), so several installations, or test
runs, can share one server without colliding.

* One stream per topic, ``<STREAM_PREFIX>_<topic>``, holding the subjects
  ``<subject_prefix>.<topic>.<partition>``. The partition is
  ``crc32(key) % partitions`` (16 by default): stable across processes and
  languages, so all the events of one customer land in one partition, where the
  stream keeps them in publish order. The partition count is part of the data
  layout: change it only on an empty or fully drained stream.
* Per consumer group and topic, one durable pull consumer per partition
  (``<group>-p<n>``, explicit acks, ``AckWait`` 30 s by default, no
  ``MaxDeliver``: the worker decides when a message is dead, from
  ``Delivery.attempts``, which is JetStream's delivery count) and one more,
  ``<group>-replay``, for the dead letters replayed to that group.
* One stream ``<STREAM_PREFIX>-DLQ`` for the dead letters of every group, and a
  key-value bucket ``<STREAM_PREFIX>-leases`` for partition ownership.

Publishing
----------
``publish`` sends the whole batch without waiting between messages (many
publishes in flight on one connection, which also keeps their order), then
waits for every JetStream acknowledgement: it returns only once the messages are
stored. Each message carries ``Nats-Msg-Id`` = its id, so the stream drops a
message whose id it saw within its duplicate window (24 h by default,
``duplicate_window``); the acknowledgement says "duplicate" and ``publish``
reports False for it. A duplicate older than the window is stored again and
delivered again: the processor's own idempotency (it records every applied
event id) is what makes that harmless. When NATS cannot be reached,
``publish`` raises :class:`BusUnavailable` at once (no connection) or after
``publish_timeout`` (2 s, no acknowledgement), so the HTTP API can answer 503;
the client keeps reconnecting in the background.

Ordering with many workers
--------------------------
A pull consumer hands its messages to whichever client asks, so two workers
pulling one consumer would process one customer's events concurrently, out of
order. Instead, every partition consumer is owned by one bus instance at a
time, through a lease in the key-value bucket: a key per (topic, group,
partition) created with compare-and-set, renewed every ``lease_ttl / 3``, and
gone after ``lease_ttl`` (10 s) if its owner dies. Each bus instance that
fetches a (topic, group) registers itself as a member (a key with the same
time-to-live), and claims at most its fair share, ``ceil((partitions + 1) /
members)`` (the replay queue counts as one more partition), so adding a worker
spreads the partitions; a member above its share hands back partitions only
when they are idle (nothing delivered and not yet acknowledged, no pull request
outstanding), so a partition changes hands only between two messages. Every
instance looks at the members every ``rebalance_every`` (0.5 s), so a worker
that joins gets its share within a second or two. Every instance of a
deployment must use the same ``partitions``.

Within its partitions an instance keeps order itself: it does not pull from a
partition while deliveries from it are still unacknowledged (unless older than
``AckWait``, when JetStream redelivers them anyway), and after a ``nack`` it
pauses that partition for the delay and then hands out the negatively
acknowledged messages before any later one (a NAK with a delay lets JetStream
deliver later messages first, so the instance holds those back). A crash costs
at most ``lease_ttl`` before another instance takes the partitions over, and
``AckWait`` before it gets the unacknowledged messages again; processing is
idempotent, so redelivery is harmless. ``close`` hands everything back at once
instead: undone messages are NAKed and the leases released.

Order holds per key (per partition), not across keys: a fetched batch is sorted
by stream sequence, so it is in publish order, but two batches, or two workers,
may process different customers' events in any order.

Dead letters and replay
-----------------------
``dead_letter`` appends the payload to the dead-letter stream, with headers for
the group, topic, original sequence, message id, key, error, attempts and time,
then acknowledges the original. A dead letter's id is its sequence in that
stream. ``replay_dead_letter`` publishes the message again on
``<subject_prefix>.<topic>.replay.<group>``, a subject only that group's replay
consumer reads (so other groups do not see it twice), with a fresh
``Nats-Msg-Id``, and records "replayed" as a marker message in the dead-letter
stream, written with an expected-last-sequence of zero so that a letter is
replayed once. Its ``replayed_at`` is therefore the time of the replay request,
not of the replay's processing; if the replayed message fails again it becomes
a new dead letter.

Lag and reset
-------------
``lag`` sums ``num_pending + num_ack_pending`` over the group's consumers.
``reset`` deletes the group's partition consumers and creates them again
starting at the given time; run it while the group's workers are stopped, or
accept that their in-flight messages come again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from tessera.bus.base import Bus, BusUnavailable, DeadLetter, Delivery, Message

log = structlog.get_logger("tessera.bus.nats")

H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_KEY = "Tessera-Key"
H_ORIGINAL_ID = "Tessera-Msg-Id"
H_GROUP = "Tessera-Group"
H_TOPIC = "Tessera-Topic"
H_SEQ = "Tessera-Seq"
H_ERROR = "Tessera-Error"
H_ATTEMPTS = "Tessera-Attempts"
H_FAILED_AT = "Tessera-Failed-At"
H_DEAD_LETTER = "Tessera-Dead-Letter"

WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed expected-last-sequence check."""

HOLD_MARGIN = 0.05
"""Extra pause after a NAK delay, so the server has put the message back first."""

MAX_ERROR_CHARS = 16_000

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


async def delete_streams(url: str, stream_prefix: str) -> None:
    """Delete every stream of one Tessera instance (its topics, dead letters and lease
    buckets, all named with ``stream_prefix``): for tests, benchmarks and decommissioning."""
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((stream_prefix, f"KV_{stream_prefix}")):
                await js.delete_stream(name)
    finally:
        await nc.close()


def token(name: str) -> str:
    """A topic or group name as one subject token, also valid in stream and consumer names.

    Letters, digits, ``_`` and ``-`` stay; any other character becomes ``=XX``
    per UTF-8 byte. The mapping is one-to-one, so two names never share a stream.
    """
    if not name:
        raise ValueError("topic and group names must not be empty")
    return "".join(
        c if c in _TOKEN_CHARS else "".join(f"={b:02X}" for b in c.encode()) for c in name
    )


def partition_of(key: str, partitions: int) -> int:
    """The partition of a key: CRC-32 is stable everywhere, unlike Python's ``hash``."""
    return zlib.crc32(key.encode()) % partitions


def header_value(text: str) -> str:
    """Text as a header value: headers are single-line ASCII and lose outer spaces."""
    value = quote(text, safe=_HEADER_SAFE)
    if value.startswith(" "):
        value = "%20" + value[1:]
    if value.endswith(" "):
        value = value[:-1] + "%20"
    return value


def header_text(value: str | None) -> str:
    if not value:
        return ""
    return unquote(value) if "%" in value else value  # header_value escapes with % only


_HEADER_NAME_SPACE = re.compile(r"\s")


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """NATS message headers (``Name: Value`` per CRLF-ended line) as a dict.

    What nats-py's parser gives, at a fraction of its cost: it tests every
    character of every header name in a generator, which was a tenth of a
    worker's time on the bus side. Lines without a colon, names that are not
    ASCII or contain white space are skipped; values are stripped and decoded
    as UTF-8 with replacement characters.
    """
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _HEADER_NAME_SPACE.search(key) is not None:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class _Client(Client):
    """nats-py's client with the header parser above."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return parse_header_lines(raw)


_ACK_V1_TOKENS = 9


def js_reply(reply: str) -> tuple[str, int, int] | None:
    """(consumer, stream sequence, delivery count) from a JetStream message's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    or, from newer servers, the same after a domain and an account hash token
    (and possibly a random token at the end). None for anything else.
    Cheaper than ``Msg.metadata``, which also builds a datetime and two dataclasses.
    """
    tokens = reply.split(".")
    n = len(tokens)
    if n < _ACK_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        if n == _ACK_V1_TOKENS:
            return tokens[3], int(tokens[5]), int(tokens[4])
        if n >= _ACK_V1_TOKENS + 2:
            return tokens[5], int(tokens[7]), int(tokens[6])
    except ValueError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Settings of :class:`NatsBus`; also accepted as URL query parameters."""

    stream_prefix: str = "TESSERA"
    subject_prefix: str = "tessera"
    partitions: int = 16
    ack_wait: float = 30.0
    """Seconds before JetStream redelivers a message that was not acknowledged."""
    max_ack_pending: int = 20_000
    duplicate_window: float = 24 * 3600.0
    """Seconds during which a message id is remembered and a republish dropped."""
    max_age: float = 0.0
    """Seconds to keep messages in topic streams; 0 keeps them until removed."""
    dead_letter_max_age: float = 0.0
    replicas: int = 1
    lease_ttl: float = 10.0
    """Seconds a partition lease outlives its last renewal (its owner's death)."""
    rebalance_every: float = 0.5
    """Seconds between two looks at the group's members by an instance that holds its
    share (one small request): how soon a new worker gets partitions."""
    publish_timeout: float = 2.0
    request_timeout: float = 2.0
    connect_wait: float = 5.0
    """How long ``start`` waits for a first connection before going on without."""
    reconnect_time_wait: float = 1.0
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    """Passed to ``nats.connect`` (credentials, TLS, ...)."""

    def __post_init__(self) -> None:
        for name in (self.stream_prefix, self.subject_prefix):
            if not name or any(c not in _TOKEN_CHARS for c in name):
                raise ValueError(f"NATS bus prefix {name!r}: use letters, digits, '_' and '-'")
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        for name in ("ack_wait", "lease_ttl", "rebalance_every", "publish_timeout",
                     "request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.duplicate_window <= 0:
            raise ValueError("duplicate_window must be positive")


_URL_TYPES: dict[str, type] = {
    f.name: {"int": int, "float": float, "str": str}[str(f.type)]
    for f in dataclasses.fields(NatsOptions)
    if str(f.type) in ("int", "float", "str")
}


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """``nats://a:4222,nats://b:4222?partitions=32`` -> servers and options."""
    base, _, query = url.partition("?")
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _URL_TYPES:
            raise ValueError(f"unknown NATS bus option {name!r} in the bus URL")
        options[name] = _URL_TYPES[name](value)
    servers = [s.strip() for s in base.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"no NATS server in bus URL {url!r}")
    return servers, options


@contextlib.contextmanager
def unavailable(action: str) -> Iterator[None]:
    """Turn the client's connection and server errors into :class:`BusUnavailable`."""
    try:
        yield
    except BusUnavailable:
        raise
    except nats.errors.MaxPayloadError as exc:
        raise ValueError(f"{action}: message larger than the server accepts") from exc
    except (nats.errors.Error, OSError) as exc:  # OSError covers TimeoutError too
        raise BusUnavailable(f"{action}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


# -- per (topic, group) state -----------------------------------------------


@dataclass(eq=False, slots=True)
class _Pull:
    """One pull request sent to a consumer, answered on its own reply subject."""

    id: int
    batch: int
    until: float
    done: asyncio.Future[None]
    received: int = 0

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(eq=False)
class _Unit:
    """A partition (or the replay queue) of one group: a durable consumer and its lease."""

    index: int
    consumer: str
    lease_key: str
    replay: bool = False
    revision: int = 0
    """Revision of our lease in the bucket; 0 when another instance owns the unit."""
    releasing: bool = False
    hold_until: float = 0.0
    awaiting_until: float = 0.0
    pull: _Pull | None = None
    buffer: dict[int, Delivery] = field(default_factory=dict)
    """Delivered by the server, not yet handed out; by stream sequence."""
    outstanding: dict[int, tuple[float, Msg]] = field(default_factory=dict)
    """Handed out and not yet acknowledged: stream sequence -> (when, message)."""
    awaiting: set[int] = field(default_factory=set)
    """Negatively acknowledged, to be handed out again before anything later."""

    @property
    def owned(self) -> bool:
        return self.revision > 0

    def clear(self) -> None:
        self.releasing = False
        self.hold_until = 0.0
        self.pull = None
        self.buffer.clear()
        self.outstanding.clear()
        self.awaiting.clear()


@dataclass(eq=False)
class _Group:
    topic: str
    group: str
    stream: str
    units: list[_Unit]
    inbox: str
    member_key: str
    lease_filter: str
    by_consumer: dict[str, _Unit]
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sub: Subscription | None = None
    keeper: asyncio.Task[None] | None = None
    rotation: int = 0
    renewed_at: float = -math.inf
    pull_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def rotated(self) -> list[_Unit]:
        """Units starting at a different one each fetch, so no partition starves."""
        start = self.rotation % len(self.units)
        return self.units[start:] + self.units[:start]


@dataclass(eq=False, slots=True)
class _Handle:
    group: _Group
    unit: _Unit
    msg: Msg
    sseq: int


class NatsBus(Bus):
    """The bus on NATS JetStream; see the module docstring for the design.

    ``url`` is ``nats://host:port`` (or ``tls://``), several separated by commas,
    optionally followed by ``?option=value&...`` with any :class:`NatsOptions`
    field; keyword ``options`` win over the URL's.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.servers, url_options = parse_url(url)
        self.options = NatsOptions(**{**url_options, **options})
        o = self.options
        self.owner = uuid.uuid4().hex
        self._dlq_stream = f"{o.stream_prefix}-DLQ"
        self._dlq_root = f"{o.subject_prefix}-dlq"
        self._bucket = f"{o.stream_prefix}-leases"
        self._bucket_stream = f"KV_{self._bucket}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._streams: set[str] = set()
        self._consumers_ready: set[tuple[str, str]] = set()
        self._dlq_ready = False
        self._groups: dict[tuple[str, str], _Group] = {}
        self._setup_lock = asyncio.Lock()
        self._closing = False
        self._lease_ttl = self.options.lease_ttl

    # -- names ------------------------------------------------------------

    def stream_name(self, topic: str) -> str:
        return f"{self.options.stream_prefix}_{token(topic)}"

    def subject(self, topic: str, partition: int) -> str:
        return f"{self.options.subject_prefix}.{token(topic)}.{partition}"

    def replay_subject(self, topic: str, group: str) -> str:
        return f"{self.options.subject_prefix}.{token(topic)}.replay.{token(group)}"

    def _letter_subject(self, topic: str, group: str) -> str:
        return f"{self._dlq_root}.L.{token(group)}.{token(topic)}"

    def _mark_subject(self, dead_letter_id: int) -> str:
        return f"{self._dlq_root}.R.{dead_letter_id}"

    def _consumer_config(
        self, topic: str, group: str, unit: int, start: datetime | None = None
    ) -> ConsumerConfig:
        o = self.options
        replay = unit == o.partitions
        name = f"{token(group)}-replay" if replay else f"{token(group)}-p{unit}"
        return ConsumerConfig(
            durable_name=name,
            description=f"tessera group {group!r} on {topic!r}"
            + (" (replayed dead letters)" if replay else f", partition {unit}"),
            deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=o.ack_wait,
            max_deliver=-1,
            max_ack_pending=o.max_ack_pending,
            filter_subject=self.replay_subject(topic, group)
            if replay
            else self.subject(topic, unit),
        )

    # -- connection ---------------------------------------------------------

    async def start(self) -> None:
        """Connect, waiting at most ``connect_wait``; then keep trying in the background.

        Streams, consumers and buckets are created when first needed, so a bus
        started while NATS is down works as soon as NATS is back.
        """
        if self._nc is not None:
            return
        o = self.options
        nc = _Client()
        self._nc = nc
        self._js = nc.jetstream(timeout=o.request_timeout)
        connect: dict[str, Any] = {
            "servers": self.servers,
            "name": "tessera",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": o.reconnect_time_wait,
            "connect_timeout": o.request_timeout,
            "ping_interval": 10,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        connect.update(o.connect_options)
        self._connect_task = asyncio.create_task(nc.connect(**connect), name="tessera-nats")
        done, _ = await asyncio.wait({self._connect_task}, timeout=o.connect_wait)
        if done:
            exc = self._connect_task.exception()
            if exc is not None:
                raise BusUnavailable(f"cannot connect to NATS: {exc}") from exc
            log.info("nats.connected", servers=self.servers)
        else:
            log.warning("nats.not_connected_yet", servers=self.servers, retrying=True)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats.error", error=f"{type(exc).__name__}: {exc}")

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats.disconnected", servers=self.servers)

    async def _on_reconnected(self) -> None:
        # The server may have restarted without its data: check again what we rely on.
        self._streams.clear()
        self._consumers_ready.clear()
        self._dlq_ready = False
        self._kv = None
        log.info("nats.reconnected", servers=self.servers)

    def _connected(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise RuntimeError("bus not started: call await bus.start() first")
        if self._closing:
            raise BusUnavailable("the bus is closing")
        if not self._nc.is_connected:
            raise BusUnavailable("NATS is not reachable; reconnecting in the background")
        return self._nc, self._js

    async def close(self) -> None:
        """Hand back partitions and in-flight messages, then drain the connection."""
        if self._nc is None or self._closing:
            return
        self._closing = True
        nc = self._nc
        for g in self._groups.values():
            if g.keeper is not None:
                g.keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await g.keeper
        if nc.is_connected:
            try:
                await asyncio.wait_for(self._leave(), 2 * self.options.request_timeout)
            except Exception as exc:
                log.warning("nats.leave_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 2 * self.options.request_timeout)
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(BaseException):
                await self._connect_task
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _leave(self) -> None:
        """Stop pulling, give back undone messages at once, release leases and membership."""
        assert self._js is not None
        kv = await self._lease_kv()
        for g in self._groups.values():
            if g.sub is not None:
                with contextlib.suppress(Exception):
                    await g.sub.unsubscribe()
            for u in g.units:
                undone = [*(d.handle.msg for d in u.buffer.values()),
                          *(msg for _, msg in u.outstanding.values())]
                for msg in undone:
                    if not msg.is_acked:
                        await msg.nak()
                u.buffer.clear()
                u.outstanding.clear()
            await asyncio.gather(
                *(self._release(kv, u) for u in g.units if u.owned), return_exceptions=True
            )
            await self._js.purge_stream(self._bucket_stream, subject=self._kv_subject(g.member_key))

    # -- streams, consumers, leases -----------------------------------------

    def _duplicate_window(self, max_age: float) -> float:
        window = self.options.duplicate_window
        return min(window, max_age) if max_age > 0 else window

    async def _add_stream(self, config: StreamConfig) -> None:
        assert self._js is not None and config.name is not None
        try:
            await self._js.add_stream(config)
        except nats.js.errors.APIError as exc:
            # Most likely it exists with other settings (an operator changed its
            # limits): use it as it is rather than fail every publish.
            await self._js.stream_info(config.name)
            log.warning("nats.stream_settings_differ", stream=config.name, error=str(exc))

    async def _ensure_stream(self, topic: str) -> str:
        name = self.stream_name(topic)
        if name in self._streams:
            return name
        o = self.options
        root = f"{o.subject_prefix}.{token(topic)}"
        await self._add_stream(
            StreamConfig(
                name=name,
                description=f"tessera topic {topic!r}",
                subjects=[f"{root}.*", f"{root}.replay.*"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_age=o.max_age or None,
                duplicate_window=self._duplicate_window(o.max_age),
                num_replicas=o.replicas,
                allow_direct=True,
            )
        )
        self._streams.add(name)
        return name

    async def _ensure_dlq(self) -> str:
        if not self._dlq_ready:
            o = self.options
            await self._add_stream(
                StreamConfig(
                    name=self._dlq_stream,
                    description="tessera dead letters and their replay markers",
                    subjects=[f"{self._dlq_root}.>"],
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.OLD,
                    max_age=o.dead_letter_max_age or None,
                    duplicate_window=self._duplicate_window(o.dead_letter_max_age),
                    num_replicas=o.replicas,
                    allow_direct=True,
                )
            )
            self._dlq_ready = True
        return self._dlq_stream

    async def _ensure_consumer(self, stream: str, config: ConsumerConfig) -> None:
        assert self._js is not None and config.durable_name is not None
        try:
            await self._js.consumer_info(stream, config.durable_name)
            return  # existing consumers keep their position (and a reset's start time)
        except nats.js.errors.NotFoundError:
            pass
        try:
            await self._js.add_consumer(stream, config)
        except nats.js.errors.APIError:
            await self._js.consumer_info(stream, config.durable_name)  # created by a peer

    async def _ensure_consumers(self, topic: str, group: str) -> str:
        stream = await self._ensure_stream(topic)
        if (topic, group) not in self._consumers_ready:
            await asyncio.gather(
                *(
                    self._ensure_consumer(stream, self._consumer_config(topic, group, unit))
                    for unit in range(self.options.partitions + 1)
                )
            )
            self._consumers_ready.add((topic, group))
        return stream

    async def _lease_kv(self) -> KeyValue:
        if self._kv is None:
            assert self._js is not None
            o = self.options
            try:
                kv = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=self._bucket,
                        description="tessera partition leases and group members",
                        history=1,
                        ttl=o.lease_ttl,
                        storage=StorageType.FILE,
                        replicas=o.replicas,
                    )
                )
            except nats.js.errors.APIError:
                kv = await self._js.key_value(self._bucket)
            # The bucket's time-to-live is what counts: it may have been created
            # by an instance with another ``lease_ttl``. Renew well within it.
            info = await self._js.stream_info(self._bucket_stream)
            self._lease_ttl = info.config.max_age or o.lease_ttl
            self._kv = kv
        return self._kv

    def _kv_subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    async def _group(self, topic: str, group: str) -> _Group:
        """The group's local state; the first call creates consumers and claims partitions."""
        g = self._groups.get((topic, group))
        if g is not None:
            await self._ensure_consumers(topic, group)
            return g
        async with self._setup_lock:
            g = self._groups.get((topic, group))
            if g is not None:
                return g
            nc, _ = self._connected()
            stream = await self._ensure_consumers(topic, group)
            t, gr, p = token(topic), token(group), self.options.partitions
            units = [_Unit(i, f"{gr}-p{i}", f"l.{t}.{gr}.{i}") for i in range(p)]
            units.append(_Unit(p, f"{gr}-replay", f"l.{t}.{gr}.replay", replay=True))
            g = _Group(
                topic=topic,
                group=group,
                stream=stream,
                units=units,
                inbox=nc.new_inbox(),
                member_key=f"m.{t}.{gr}.{self.owner}",
                lease_filter=self._kv_subject(f"*.{t}.{gr}.*"),
                by_consumer={u.consumer: u for u in units},
            )
            state = g

            async def on_msg(msg: Msg) -> None:
                await self._on_msg(state, msg)

            g.sub = await nc.subscribe(f"{g.inbox}.>", cb=on_msg)
            try:
                await self._rebalance(g)
            except BaseException:
                with contextlib.suppress(Exception):
                    await g.sub.unsubscribe()
                raise
            g.keeper = asyncio.create_task(self._keep_leases(g), name=f"tessera-leases-{group}")
            self._groups[(topic, group)] = g
            return g

    def owned_partitions(self, topic: str, group: str) -> list[int]:
        """Partitions this instance currently owns for the group (monitoring, tests)."""
        g = self._groups.get((topic, group))
        return [u.index for u in g.units if u.owned and not u.replay] if g else []

    async def _keep_leases(self, g: _Group) -> None:
        """Renew leases every ``lease_ttl / 3``; look at the members every ``rebalance_every``.

        An instance that holds its share looks again soon, not only at its next
        renewal: a worker started a moment after another (``tessera worker
        --concurrency 2``) found every partition taken and waited a third of
        ``lease_ttl`` before the first one noticed it and handed any back.
        """
        while True:
            period = self._lease_ttl / 3
            settled = False
            try:
                if self._nc is not None and self._nc.is_connected:
                    settled = await self._rebalance(g)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nats.leases_failed", topic=g.topic, group=g.group, error=f"{exc!r}")
            await asyncio.sleep(min(period, self.options.rebalance_every if settled else 0.5))

    async def _rebalance(self, g: _Group) -> bool:
        """Renew our leases, hand back what exceeds our share, claim what is missing.

        True when this instance holds exactly its share and hands nothing back.
        """
        assert self._js is not None
        kv = await self._lease_kv()
        now = time.monotonic()
        if now - g.renewed_at >= self._lease_ttl / 3 * 0.9:
            await kv.put(g.member_key, self.owner.encode())
            await asyncio.gather(*(self._renew(kv, g, u) for u in g.units if u.owned))
            g.renewed_at = now
        info = await self._js.stream_info(self._bucket_stream, subjects_filter=g.lease_filter)
        present = set(info.state.subjects or ())
        members_prefix = self._kv_subject(f"m.{token(g.topic)}.{token(g.group)}.")
        members = max(1, sum(1 for s in present if s.startswith(members_prefix)))
        share = math.ceil(len(g.units) / members)

        owned = [u for u in g.units if u.owned]
        for u in owned:
            u.releasing = False
        handing_back = False
        if len(owned) > share:
            # prefer idle units: they can go at once
            candidates = sorted(owned, key=lambda u: (not self._idle(u, now), -u.index))
            for u in candidates[: len(owned) - share]:
                u.releasing = True  # no new pulls from now on
                if self._idle(u, now):
                    await self._release(kv, u)
                    log.info("nats.partition_released", topic=g.topic, group=g.group, unit=u.index)
                else:
                    handing_back = True

        missing = share - sum(1 for u in g.units if u.owned)
        if missing > 0:
            start = zlib.crc32(self.owner.encode()) % len(g.units)
            for u in g.units[start:] + g.units[:start]:
                if missing <= 0:
                    break
                if u.owned or self._kv_subject(u.lease_key) in present:
                    continue
                try:
                    revision = await kv.create(u.lease_key, self.owner.encode())
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # a peer was faster
                u.clear()
                u.revision = revision
                missing -= 1
                log.info("nats.partition_claimed", topic=g.topic, group=g.group, unit=u.index)
        return missing <= 0 and not handing_back

    async def _renew(self, kv: KeyValue, g: _Group, u: _Unit) -> None:
        try:
            u.revision = await kv.update(u.lease_key, self.owner.encode(), last=u.revision)
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:  # our lease lapsed (we could not renew in time): take it again if still free
            u.revision = await kv.create(u.lease_key, self.owner.encode())
            log.warning("nats.lease_lapsed", topic=g.topic, group=g.group, unit=u.index)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("nats.partition_lost", topic=g.topic, group=g.group, unit=u.index)
            buffered = [d.handle.msg for d in u.buffer.values()]
            u.revision = 0
            u.clear()
            for msg in buffered:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()

    async def _release(self, kv: KeyValue, u: _Unit) -> None:
        assert self._js is not None
        try:  # still ours? (compare-and-set), then remove it without leaving a marker
            await kv.update(u.lease_key, self.owner.encode(), last=u.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        else:
            await self._js.purge_stream(self._bucket_stream, subject=self._kv_subject(u.lease_key))
        u.revision = 0
        u.clear()

    def _busy(self, u: _Unit, now: float) -> bool:
        """Deliveries of this unit are still in the application's hands."""
        stale = [s for s, (t, _) in u.outstanding.items() if now - t >= self.options.ack_wait]
        for s in stale:  # JetStream redelivers those anyway
            del u.outstanding[s]
        return bool(u.outstanding)

    def _idle(self, u: _Unit, now: float) -> bool:
        return (
            not u.buffer
            and not u.awaiting
            and not self._busy(u, now)
            and (u.pull is None or u.pull.until <= now)
        )

    # -- publishing -----------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        if not messages:
            return []
        self._connected()
        with unavailable("publish"):
            for attempt in (1, 2):
                stream = await self._ensure_stream(topic)
                try:
                    return await self._publish(topic, messages)
                except nats.js.errors.NoStreamResponseError:
                    if attempt == 2:
                        raise
                    self._streams.discard(stream)  # the stream vanished: create it again
        raise AssertionError("unreachable")

    async def _publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        _, js = self._connected()
        o = self.options
        root = f"{o.subject_prefix}.{token(topic)}"
        futures: list[asyncio.Future[PubAck]] = []

        async def send_then_wait() -> list[PubAck | BaseException]:
            # No ``wait_stall``: it would wrap each send in a task, yielding to
            # the connection's flusher once per message, i.e. one write per
            # message instead of one for the batch. The overall timeout below
            # bounds a stall instead.
            for m in messages:
                futures.append(
                    await js.publish_async(
                        f"{root}.{partition_of(m.key, o.partitions)}",
                        m.payload,
                        headers={H_MSG_ID: header_value(m.id), H_KEY: header_value(m.key)},
                    )
                )
            return await asyncio.gather(*futures, return_exceptions=True)

        try:
            acks = await asyncio.wait_for(send_then_wait(), o.publish_timeout)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        stored: list[bool] = []
        for ack in acks:
            if isinstance(ack, BaseException):
                raise ack
            stored.append(not ack.duplicate)
        return stored

    # -- consuming --------------------------------------------------------------

    async def fetch(
        self, topic: str, group: str, max_messages: int, timeout: float
    ) -> list[Delivery]:
        if max_messages <= 0:
            return []
        self._connected()
        with unavailable("fetch"):
            g = await self._group(topic, group)
        deadline = time.monotonic() + max(0.0, timeout)
        async with g.lock:
            g.rotation += 1
            now = time.monotonic()
            # units with deliveries of an earlier fetch still unacknowledged
            blocked = {u.index for u in g.units if self._busy(u, now)}
            while True:
                self._connected()
                g.arrived.clear()
                out = self._take(g, max_messages, blocked)
                if len(out) < max_messages:
                    with unavailable("fetch"):
                        await self._pull_available(g, max_messages - len(out), blocked)
                    out.extend(self._take(g, max_messages - len(out), blocked))
                if out:
                    # stream order across partitions too: publish order within the batch
                    out.sort(key=lambda d: self._handle(d).sseq)
                    return out
                now = time.monotonic()
                if now >= deadline:
                    return []
                with unavailable("fetch"):
                    await self._linger(g, deadline - now, blocked)
                holds = [u.hold_until for u in g.units if u.owned and u.hold_until > now]
                wake = min([deadline, *holds])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(g.arrived.wait(), max(0.0, wake - now))

    def _pullable(self, u: _Unit, now: float, blocked: set[int]) -> bool:
        if u.pull is not None and u.pull.until <= now:
            u.pull.finish()
            u.pull = None
        return (
            u.owned
            and not u.releasing
            and u.index not in blocked
            and now >= u.hold_until
            and u.pull is None
        )

    def _take(self, g: _Group, want: int, blocked: set[int]) -> list[Delivery]:
        """Hand out buffered messages: per unit in stream order, NAKed ones first."""
        now = time.monotonic()
        out: list[Delivery] = []
        for u in g.rotated():
            if len(out) >= want:
                break
            if not u.owned or not u.buffer or u.index in blocked or now < u.hold_until:
                continue
            if u.awaiting and now > u.awaiting_until:
                log.warning("nats.redelivery_missing", group=g.group, seqs=sorted(u.awaiting))
                u.awaiting.clear()
            for sseq in sorted(u.buffer):
                if len(out) >= want or (u.awaiting and sseq > min(u.awaiting)):
                    break
                delivery = u.buffer.pop(sseq)
                u.awaiting.discard(sseq)
                u.outstanding[sseq] = (now, delivery.handle.msg)
                out.append(delivery)
        return out

    def _delivery(self, g: _Group, u: _Unit, msg: Msg, sseq: int, attempts: int) -> Delivery:
        headers = msg.headers or {}
        if u.replay:
            msg_id = header_text(headers.get(H_ORIGINAL_ID))
            seq = int(headers.get(H_SEQ) or sseq)
        else:
            msg_id = header_text(headers.get(H_MSG_ID)) or f"{g.stream}:{sseq}"
            seq = sseq
        return Delivery(
            topic=g.topic,
            group=g.group,
            seq=seq,
            id=msg_id,
            key=header_text(headers.get(H_KEY)),
            payload=msg.data,
            attempts=attempts,
            handle=_Handle(g, u, msg, sseq),
        )

    async def _send_pull(self, g: _Group, u: _Unit, batch: int, expires: float | None) -> _Pull:
        nc, js = self._connected()
        now = time.monotonic()
        request: dict[str, Any] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
            until = now + self.options.request_timeout
        else:
            request["expires"] = int(expires * 1e9)
            until = now + expires + HOLD_MARGIN
        pull = _Pull(next(g.pull_ids), batch, until, asyncio.get_running_loop().create_future())
        u.pull = pull
        await nc.publish(
            f"{js._prefix}.CONSUMER.MSG.NEXT.{g.stream}.{u.consumer}",
            json.dumps(request).encode(),
            reply=f"{g.inbox}.{u.index}.{pull.id}",
        )
        return pull

    async def _pull_available(self, g: _Group, want: int, blocked: set[int]) -> None:
        """Ask the units for what they have now, until ``want`` came.

        With several units and a large ``want``, every unit is asked at once for
        an even share (one round trip instead of one per unit); then, one after
        the other, those that gave their whole share, for the rest.
        """
        now = time.monotonic()
        units = [u for u in g.rotated() if self._pullable(u, now, blocked)]
        if len(units) > 1 and want > len(units):
            share = math.ceil(want / len(units))
            pulls = [(u, await self._send_pull(g, u, share, None)) for u in units]
            await self._answered([p for _, p in pulls])
            want -= sum(p.received for _, p in pulls)
            for u, _ in pulls:
                self._hold_if_behind(u)
            units = [u for u, p in pulls if p.received >= share]
        for u in units:
            if want <= 0:
                break
            if not self._pullable(u, time.monotonic(), blocked):
                continue
            pull = await self._send_pull(g, u, want, None)
            await self._answered([pull])
            want -= pull.received
            self._hold_if_behind(u)

    async def _answered(self, pulls: list[_Pull]) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(p.done) for p in pulls)),
                self.options.request_timeout,
            )
        except TimeoutError:
            raise BusUnavailable("JetStream did not answer a pull request") from None

    @staticmethod
    def _hold_if_behind(u: _Unit) -> None:
        if u.awaiting and min(u.awaiting) not in u.buffer:
            # the NAKed messages are not back yet: do not spin on this unit
            u.hold_until = time.monotonic() + HOLD_MARGIN

    async def _linger(self, g: _Group, remaining: float, blocked: set[int]) -> None:
        """Leave a one-message pull request on every idle unit, to wake on the first arrival."""
        if remaining < 0.01:
            return
        now = time.monotonic()
        for u in g.units:
            if self._pullable(u, now, blocked):
                await self._send_pull(g, u, 1, remaining)

    async def _on_msg(self, g: _Group, msg: Msg) -> None:
        """Route a message or a status reply of a pull request to its unit."""
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None or not msg.reply:
            if status == "100":
                return  # idle heartbeat
            parts = msg.subject[len(g.inbox) + 1 :].split(".")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                index, pull_id = int(parts[0]), int(parts[1])
                if index < len(g.units):
                    u = g.units[index]
                    if u.pull is not None and u.pull.id == pull_id:
                        u.pull.finish()
                        u.pull = None
            if status in ("409", "503"):  # consumer deleted or missing: check them again
                self._consumers_ready.discard((g.topic, g.group))
            g.arrived.set()
            return
        parsed = js_reply(msg.reply)
        if parsed is None:
            return
        consumer, sseq, attempts = parsed
        unit = g.by_consumer.get(consumer)
        if unit is None:
            return
        u = unit
        if not u.owned:  # a late delivery after we handed the unit back
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
            return
        u.buffer[sseq] = self._delivery(g, u, msg, sseq, attempts)
        pull = u.pull
        if pull is not None:
            pull.received += 1
            if pull.received >= pull.batch:
                pull.finish()
                u.pull = None
        g.arrived.set()

    @staticmethod
    def _handle(delivery: Delivery) -> _Handle:
        if not isinstance(delivery.handle, _Handle):
            raise ValueError("this delivery did not come from a NatsBus")
        return delivery.handle

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge; returns once JetStream has processed the acknowledgements.

        All but the last acknowledgement of each consumer are sent without
        waiting; the last one waits for the server's confirmation, and a
        consumer processes acknowledgements in order, so that confirms them all.
        """
        if not deliveries:
            return
        handles = [self._handle(d) for d in deliveries]
        self._connected()
        by_unit: dict[int, list[_Handle]] = {}
        for h in handles:
            by_unit.setdefault(id(h.unit), []).append(h)

        async def ack_unit(hs: list[_Handle]) -> None:
            pending = [h for h in hs if not h.msg.is_acked]
            if pending:
                for h in pending[:-1]:
                    await h.msg.ack()
                # NoResponders: the consumer is gone (a reset), nothing left to acknowledge
                with contextlib.suppress(nats.errors.NoRespondersError):
                    await pending[-1].msg.ack_sync(timeout=self.options.request_timeout)
            for h in hs:
                h.unit.outstanding.pop(h.sseq, None)

        with unavailable("ack"):
            await asyncio.gather(*(ack_unit(hs) for hs in by_unit.values()))

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        """NAK with a delay, and pause those partitions here so order per key holds."""
        if not deliveries:
            return
        handles = [self._handle(d) for d in deliveries]
        self._connected()
        delay = max(0.0, delay)
        with unavailable("nack"):
            for h in handles:
                if h.msg.is_acked:
                    continue  # acknowledged or NAKed already
                await h.msg.nak(delay=delay or None)
                u = h.unit
                u.outstanding.pop(h.sseq, None)
                if u.owned:
                    u.awaiting.add(h.sseq)
                    u.hold_until = max(u.hold_until, time.monotonic() + delay + HOLD_MARGIN)
                    u.awaiting_until = u.hold_until + self.options.ack_wait

    # -- dead letters -----------------------------------------------------------

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        h = self._handle(delivery)
        _, js = self._connected()
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " [truncated]"
        headers = {
            # a retried call (e.g. after a failed ack) stores the letter once
            H_MSG_ID: f"{h.group.stream}.{h.unit.consumer}.{h.sseq}.{delivery.attempts}",
            H_GROUP: header_value(delivery.group),
            H_TOPIC: header_value(delivery.topic),
            H_SEQ: str(delivery.seq),
            H_ORIGINAL_ID: header_value(delivery.id),
            H_KEY: header_value(delivery.key),
            H_ERROR: header_value(error),
            H_ATTEMPTS: str(delivery.attempts),
            H_FAILED_AT: f"{time.time():.6f}",
        }
        with unavailable("dead letter"):
            await self._ensure_dlq()
            await js.publish(
                self._letter_subject(delivery.topic, delivery.group),
                delivery.payload,
                timeout=self.options.publish_timeout,
                headers=headers,
            )
        await self.ack([delivery])

    async def dead_letters(
        self, group: str | None = None, include_replayed: bool = False
    ) -> list[DeadLetter]:
        self._connected()
        with unavailable("list dead letters"):
            stream = await self._ensure_dlq()
            messages = await self._read_all(stream)
        letter_prefix = f"{self._dlq_root}.L."
        mark_prefix = f"{self._dlq_root}.R."
        replayed: dict[int, float] = {}
        letters: list[DeadLetter] = []
        for seq, subject, headers, data in messages:
            if subject.startswith(mark_prefix):
                with contextlib.suppress(ValueError):
                    replayed[int(subject[len(mark_prefix) :])] = float(data.decode() or 0)
            elif subject.startswith(letter_prefix):
                letters.append(
                    DeadLetter(
                        id=seq,
                        group=header_text(headers.get(H_GROUP)),
                        topic=header_text(headers.get(H_TOPIC)),
                        seq=int(headers.get(H_SEQ) or 0),
                        message_id=header_text(headers.get(H_ORIGINAL_ID)),
                        key=header_text(headers.get(H_KEY)),
                        payload=data,
                        error=header_text(headers.get(H_ERROR)),
                        attempts=int(headers.get(H_ATTEMPTS) or 0),
                        failed_at=float(headers.get(H_FAILED_AT) or 0),
                    )
                )
        out = []
        for letter in letters:
            if group is not None and letter.group != group:
                continue
            replayed_at = replayed.get(letter.id)
            if replayed_at is not None and not include_replayed:
                continue
            out.append(dataclasses.replace(letter, replayed_at=replayed_at))
        return out

    async def _read_all(self, stream: str) -> list[tuple[int, str, dict[str, str], bytes]]:
        """Every message of a stream, through a short-lived consumer that is deleted after."""
        _, js = self._connected()
        info = await js.stream_info(stream)
        if info.state.messages == 0:
            return []
        consumer = await js.add_consumer(
            stream,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        psub = await js.pull_subscribe_bind(consumer=consumer.name, stream=stream)
        out: list[tuple[int, str, dict[str, str], bytes]] = []
        try:
            while True:
                try:
                    batch = await psub.fetch(512, timeout=self.options.request_timeout)
                except nats.errors.TimeoutError:
                    break
                for m in batch:
                    md = m.metadata
                    out.append((md.sequence.stream, m.subject, dict(m.headers or {}), m.data))
                if not batch or batch[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, consumer.name)
        return out

    async def erase(self, topics: Sequence[str], match: Callable[[bytes], bool]) -> int:
        """JetStream cannot delete by content: read each stream (and the dead letters)
        through a short-lived consumer, and delete the matching messages by sequence.
        A plain delete asks the server to overwrite the message with random data
        ("secure erase"), so its bytes do not stay in the stream's files."""
        _, js = self._connected()
        removed = 0
        with unavailable("erase"):
            streams = [await self._ensure_stream(t) for t in topics]
            streams.append(await self._ensure_dlq())
            letter_prefix = f"{self._dlq_root}.L."
            for stream in streams:
                for seq, subject, _, data in await self._read_all(stream):
                    if stream == self._dlq_stream and not subject.startswith(letter_prefix):
                        continue
                    if match(data):
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            await js.delete_msg(stream, seq)
                            removed += 1
        return removed

    async def replay_dead_letter(self, dead_letter_id: int) -> bool:
        if dead_letter_id <= 0:
            return False
        _, js = self._connected()
        with unavailable("replay dead letter"):
            stream = await self._ensure_dlq()
            try:
                raw = await js.get_msg(stream, seq=dead_letter_id)
            except nats.js.errors.NotFoundError:
                return False
            if not (raw.subject or "").startswith(f"{self._dlq_root}.L."):
                return False
            mark = self._mark_subject(dead_letter_id)
            try:
                await js.get_last_msg(stream, mark)
                return False  # replayed before
            except nats.js.errors.NotFoundError:
                pass
            headers = raw.headers or {}
            topic = header_text(headers.get(H_TOPIC))
            group = header_text(headers.get(H_GROUP))
            await self._ensure_consumers(topic, group)
            await js.publish(
                self.replay_subject(topic, group),
                raw.data or b"",
                timeout=self.options.publish_timeout,
                headers={
                    H_MSG_ID: f"replay.{stream}.{dead_letter_id}",
                    H_ORIGINAL_ID: headers.get(H_ORIGINAL_ID, ""),
                    H_KEY: headers.get(H_KEY, ""),
                    H_SEQ: headers.get(H_SEQ, "0"),
                    H_DEAD_LETTER: str(dead_letter_id),
                },
            )
            try:
                await js.publish(
                    mark,
                    f"{time.time():.6f}".encode(),
                    timeout=self.options.publish_timeout,
                    headers={H_EXPECTED_LAST_SUBJECT_SEQ: "0"},
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    return False  # a concurrent replay won; the message id deduplicated ours
                raise
        return True

    # -- lag and reset --------------------------------------------------------------

    def _consumer_names(self, group: str, replay: bool = True) -> list[str]:
        names = [f"{token(group)}-p{i}" for i in range(self.options.partitions)]
        return [*names, f"{token(group)}-replay"] if replay else names

    async def lag(self, topic: str, group: str) -> int:
        _, js = self._connected()
        with unavailable("lag"):
            stream = await self._ensure_consumers(topic, group)
            infos = await asyncio.gather(
                *(js.consumer_info(stream, name) for name in self._consumer_names(group))
            )
        return sum((i.num_pending or 0) + (i.num_ack_pending or 0) for i in infos)

    async def reset(self, topic: str, group: str, from_time: float) -> None:
        _, js = self._connected()
        start = datetime.fromtimestamp(from_time, tz=UTC)
        with unavailable("reset"):
            stream = await self._ensure_stream(topic)

            async def recreate(partition: int) -> None:
                config = self._consumer_config(topic, group, partition, start)
                assert config.durable_name is not None
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(stream, config.durable_name)
                await js.add_consumer(stream, config)

            await asyncio.gather(*(recreate(p) for p in range(self.options.partitions)))
            await self._ensure_consumer(
                stream, self._consumer_config(topic, group, self.options.partitions)
            )
        self._consumers_ready.add((topic, group))
        g = self._groups.get((topic, group))
        if g is not None:
            for u in g.units:
                if not u.replay:
                    revision = u.revision
                    u.clear()
                    u.revision = revision
