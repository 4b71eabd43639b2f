"""The bus contract against a real NATS JetStream server, plus what only NATS has.

Each test gets its own stream and subject prefixes (derived from its temporary
directory, so a bus reopened within the test finds the same streams), and the
streams it made are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.bus import open_bus
from tessera.bus.base import Bus, BusUnavailable, Delivery, Message
from tessera.bus.nats import (
    NatsBus,
    delete_streams,
    header_text,
    header_value,
    js_reply,
    parse_header_lines,
    parse_url,
    partition_of,
    token,
)
from tests.contract.bus_contract import BusContract, msg, unique
from tests.services import require_nats

pytestmark = pytest.mark.services


def prefixes(tmp_path: Path) -> tuple[str, str]:
    digest = hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]
    return f"TT{digest}", f"tt{digest}"


class TestNatsBus(BusContract):
    @pytest.fixture(autouse=True)
    async def _cleanup(self, tmp_path: Path) -> AsyncIterator[None]:
        url = require_nats()
        yield
        await delete_streams(url, prefixes(tmp_path)[0])

    async def make_bus(self, tmp_path: Path) -> Bus:
        stream_prefix, subject_prefix = prefixes(tmp_path)
        return NatsBus(require_nats(), stream_prefix=stream_prefix, subject_prefix=subject_prefix)


# -- NATS-specific behaviour -----------------------------------------------------


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    url = require_nats()
    yield url
    await delete_streams(url, prefixes(tmp_path)[0])


def make(url: str, tmp_path: Path, **options: Any) -> NatsBus:
    stream_prefix, subject_prefix = prefixes(tmp_path)
    return NatsBus(url, stream_prefix=stream_prefix, subject_prefix=subject_prefix, **options)


@contextlib.asynccontextmanager
async def started(bus: NatsBus) -> AsyncIterator[NatsBus]:
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_names_are_safe_and_one_to_one() -> None:
    assert token("events") == "events"
    assert token("a.b c") == "a=2Eb=20c"
    assert token("a=2E") != token("a.")
    assert token("é") == "=C3=A9"
    with pytest.raises(ValueError):
        token("")
    assert all(partition_of(f"user{i}", 16) == partition_of(f"user{i}", 16) for i in range(50))
    assert {partition_of(f"user{i}", 16) for i in range(200)} == set(range(16))
    for text in ["plain", " spaced ", "line\r\nbreak", "100% ünïcode", ""]:
        assert header_text(header_value(text)) == text
        assert "\n" not in header_value(text) and header_value(text).isascii()


def test_header_text_without_escapes_is_the_value_itself() -> None:
    assert header_text("abc:def-1") == "abc:def-1"
    assert header_text("a%20b") == "a b"
    assert header_text(None) == ""


def test_header_parser_gives_what_the_client_library_gives() -> None:
    from nats.aio.client import Client

    blocks = [
        b"Nats-Msg-Id: abc\r\nTessera-Key: user_id%3Au1\r\n\r\n",
        b"A:1\r\nB:\t two \r\nno colon\r\n\r\n",
        b"Bad Name: x\r\nOk: y\r\n\xc3\xa9: z\r\nUtf: \xc3\xa9\xff\r\n",
        b"Sep\x1c: 1\r\nDup: 1\r\nDup: 2\r\n: empty name\r\n",
        b"",
    ]
    for raw in blocks:
        assert parse_header_lines(raw) == Client._parse_header_lines(raw), raw


def test_reply_subject_parser_agrees_with_message_metadata() -> None:
    from nats.aio.msg import Msg

    v1 = "$JS.ACK.STREAM.events-p3.2.1041.17.1700000000000000000.5"
    v2 = "$JS.ACK._.ACC.STREAM.events-p3.2.1041.17.1700000000000000000.5.rnd"
    for reply in (v1, v2, v2.rsplit(".", 1)[0]):
        md = Msg.Metadata._from_reply(reply)
        assert js_reply(reply) == (md.consumer, md.sequence.stream, md.num_delivered)
    for other in ("", "_INBOX.abc.1", "$JS.ACK.S.C.x.1.1.1.1", "$JS.ACK.S.C.1.1.1.1.1.1"):
        assert js_reply(other) is None


def test_url_options() -> None:
    servers, options = parse_url("nats://a:4222,nats://b:4222?partitions=4&stream_prefix=X")
    assert servers == ["nats://a:4222", "nats://b:4222"]
    assert options == {"partitions": 4, "stream_prefix": "X"}
    with pytest.raises(ValueError):
        parse_url("nats://a:4222?nonsense=1")
    with pytest.raises(ValueError):
        NatsBus("nats://a:4222", stream_prefix="bad.prefix")


def test_open_bus_chooses_nats(tmp_path: Path) -> None:
    bus = open_bus("nats://127.0.0.1:4222?partitions=8", tmp_path)
    assert isinstance(bus, NatsBus)
    assert bus.options.partitions == 8


async def test_unreachable_server_raises_bus_unavailable_promptly(tmp_path: Path) -> None:
    bus = NatsBus(f"nats://127.0.0.1:{free_port()}", connect_wait=0.5)
    began = time.monotonic()
    await bus.start()  # does not fail: it keeps connecting in the background
    try:
        with pytest.raises(BusUnavailable):
            await bus.publish("events", [msg(1)])
        with pytest.raises(BusUnavailable):
            await bus.fetch("events", "g", 10, 0.2)
        assert time.monotonic() - began < 3.0
    finally:
        await bus.close()


async def test_messages_spread_over_partition_subjects(nats_url: str, tmp_path: Path) -> None:
    async with started(make(nats_url, tmp_path, partitions=4)) as bus:
        topic = unique("topic")
        keys = [f"user{i}" for i in range(40)]
        assert await bus.publish(topic, [Message(f"id-{k}", k, b"x") for k in keys]) == [True] * 40
        assert bus._js is not None
        info = await bus._js.stream_info(bus.stream_name(topic), subjects_filter=">")
        expected: dict[str, int] = {}
        for k in keys:
            subject = bus.subject(topic, partition_of(k, 4))
            expected[subject] = expected.get(subject, 0) + 1
        assert info.state.subjects == expected
        assert info.config.duplicate_window == 24 * 3600


async def test_a_fetch_asks_every_partition_at_once(nats_url: str, tmp_path: Path) -> None:
    """One round of pull requests for all partitions, not one round trip after another."""
    async with started(make(nats_url, tmp_path, partitions=4)) as bus:
        topic, group = unique("topic"), unique("group")
        keys = [f"user{i}" for i in range(40)]
        await bus.publish(topic, [Message(f"id-{k}", k, k.encode()) for k in keys])
        in_flight: list[int] = []
        send_pull = bus._send_pull

        async def counting(g: Any, u: Any, batch: int, expires: float | None) -> Any:
            in_flight.append(1 + sum(1 for v in g.units if v.pull is not None
                                     and not v.pull.done.done()))
            return await send_pull(g, u, batch, expires)

        bus._send_pull = counting  # type: ignore[method-assign]
        got: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            batch = await bus.fetch(topic, group, 40 - len(got), 1.0)
            got += batch
            await bus.ack(batch)
        assert sorted(d.payload for d in got) == sorted(k.encode() for k in keys)
        assert max(in_flight) >= 4


async def test_nack_keeps_later_messages_of_the_partition_behind(
    nats_url: str, tmp_path: Path
) -> None:
    """A NAK with a delay must not let the following messages of the key overtake."""
    async with started(make(nats_url, tmp_path)) as bus:
        topic, group = unique("topic"), unique("group")
        await bus.publish(topic, [msg(i) for i in range(5)])
        first = await bus.fetch(topic, group, 5, 5.0)
        assert [d.payload for d in first] == [f"payload-{i}".encode() for i in range(5)]
        await bus.ack(first[:1])
        await bus.nack(first[1:], 0.4)
        await bus.publish(topic, [msg(5)])
        order: list[tuple[bytes, int]] = []
        deadline = time.monotonic() + 10
        while len(order) < 5 and time.monotonic() < deadline:
            batch = await bus.fetch(topic, group, 2, 0.2)
            order.extend((d.payload, d.attempts) for d in batch)
            await bus.ack(batch)
        assert [p for p, _ in order] == [f"payload-{i}".encode() for i in range(1, 6)]
        assert [a for _, a in order] == [2, 2, 2, 2, 1]


async def test_one_key_is_never_processed_by_two_workers_at_once(
    nats_url: str, tmp_path: Path
) -> None:
    """Two workers of one group share the partitions, and each key stays in order."""
    topic, group = unique("topic"), unique("group")
    a = make(nats_url, tmp_path, lease_ttl=1.5)
    b = make(nats_url, tmp_path, lease_ttl=1.5)
    async with started(a), started(b):
        # both join the group, then wait until the partitions are shared out
        await a.fetch(topic, group, 1, 0.05)
        await b.fetch(topic, group, 1, 0.05)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            owned_a, owned_b = a.owned_partitions(topic, group), b.owned_partitions(topic, group)
            if owned_a and owned_b and len(owned_a) + len(owned_b) == 16:
                break
            await asyncio.gather(a.fetch(topic, group, 1, 0.1), b.fetch(topic, group, 1, 0.1))
        assert set(owned_a).isdisjoint(owned_b) and len(owned_a) + len(owned_b) == 16

        keys = [f"user{i}" for i in range(12)]
        per_key = 25
        for n in range(per_key):
            await bus_publish(a, topic, [Message(f"{k}-{n}", k, f"{k}:{n}".encode()) for k in keys])

        processed: list[tuple[str, int, str]] = []
        busy: dict[str, str] = {}
        overlaps: list[str] = []

        async def worker(name: str, bus: NatsBus) -> None:
            deadline = time.monotonic() + 30
            while len(processed) < len(keys) * per_key and time.monotonic() < deadline:
                batch = await bus.fetch(topic, group, 7, 0.1)
                for d in batch:
                    if busy.get(d.key, name) != name:
                        overlaps.append(d.key)
                    busy[d.key] = name
                for d in batch:
                    await asyncio.sleep(0.001)
                    key, n = d.payload.decode().split(":")
                    processed.append((key, int(n), name))
                for d in batch:
                    busy.pop(d.key, None)
                await bus.ack(batch)

        await asyncio.gather(worker("a", a), worker("b", b))
        assert not overlaps
        for k in keys:
            assert [n for key, n, _ in processed if key == k] == list(range(per_key))
        assert {name for _, _, name in processed} == {"a", "b"}


async def bus_publish(bus: NatsBus, topic: str, messages: list[Message]) -> None:
    assert all(await bus.publish(topic, messages))


async def test_a_closed_worker_hands_its_partitions_over(nats_url: str, tmp_path: Path) -> None:
    topic, group = unique("topic"), unique("group")
    a = make(nats_url, tmp_path, lease_ttl=1.5)
    b = make(nats_url, tmp_path, lease_ttl=1.5)
    await a.start()
    async with started(b):
        await bus_publish(a, topic, [msg(i) for i in range(6)])
        got = await a.fetch(topic, group, 3, 5.0)
        assert [d.payload for d in got] == [b"payload-0", b"payload-1", b"payload-2"]
        await a.ack(got[:1])
        await a.close()  # payload-1 and -2 were not acknowledged: they come back first
        rest: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(rest) < 5 and time.monotonic() < deadline:
            batch = await b.fetch(topic, group, 10, 0.2)
            rest.extend(d.payload for d in batch)
            await b.ack(batch)
        assert rest == [f"payload-{i}".encode() for i in range(1, 6)]


async def test_a_worker_that_joins_gets_partitions_long_before_a_lease_renewal(
    nats_url: str, tmp_path: Path
) -> None:
    """The first worker took every partition; it hands some back as soon as it sees the
    second one, not at its next renewal (a third of lease_ttl, 20 s here)."""
    topic, group = unique("topic"), unique("group")
    async with started(make(nats_url, tmp_path, lease_ttl=60.0)) as a, started(
        make(nats_url, tmp_path, lease_ttl=60.0)
    ) as b:
        await bus_publish(a, topic, [Message(f"id-{i}", f"user{i}", b"x") for i in range(200)])
        first = await a.fetch(topic, group, 10, 5.0)
        await a.ack(first)
        assert len(a.owned_partitions(topic, group)) == 16
        got: list[Delivery] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = await b.fetch(topic, group, 10, 0.2)
            await b.ack(got)
            await a.ack(await a.fetch(topic, group, 10, 0.05))
        assert got, "the second worker got nothing within 10 s"
        assert b.owned_partitions(topic, group)


async def test_dead_letter_headers_and_single_replay(nats_url: str, tmp_path: Path) -> None:
    async with started(make(nats_url, tmp_path)) as bus:
        topic, group = "odd topic.é", "odd group*"
        await bus_publish(bus, topic, [Message("id 1", " key\n1 ", b"\x00binary")])
        [d] = await bus.fetch(topic, group, 1, 5.0)
        assert d.key == " key\n1 " and d.id == "id 1"
        error = "Traceback:\n  ValueError: 100% wrong \u2013 ünïcode"
        await bus.dead_letter(d, error)
        await bus.dead_letter(d, error)  # a retried call stores it once
        [letter] = await bus.dead_letters(group)
        assert (letter.group, letter.topic, letter.seq) == (group, topic, d.seq)
        assert (letter.message_id, letter.key, letter.payload) == (
            "id 1",
            " key\n1 ",
            b"\x00binary",
        )
        assert letter.error == error and letter.attempts == 1
        assert abs(letter.failed_at - time.time()) < 60 and letter.replayed_at is None
        assert await bus.dead_letters("another group") == []

        assert await bus.replay_dead_letter(letter.id)
        assert not await bus.replay_dead_letter(letter.id)
        assert not await bus.replay_dead_letter(letter.id + 1000)
        [again] = await bus.fetch(topic, group, 10, 5.0)
        assert (again.id, again.key, again.seq, again.payload) == (
            "id 1",
            " key\n1 ",
            d.seq,
            b"\x00binary",
        )
        await bus.dead_letter(again, "still broken")  # fails again: a new letter
        letters = await bus.dead_letters(group, include_replayed=True)
        assert [x.error for x in letters] == [error, "still broken"]
        assert letters[0].replayed_at is not None and letters[1].replayed_at is None
        assert [x.error for x in await bus.dead_letters()] == ["still broken"]


async def test_lag_and_reset_for_a_group_that_never_fetched(nats_url: str, tmp_path: Path) -> None:
    async with started(make(nats_url, tmp_path)) as bus:
        topic, group = unique("topic"), unique("group")
        await bus_publish(bus, topic, [Message(f"m{i}", f"user{i}", b"x") for i in range(10)])
        assert await bus.lag(topic, group) == 10
        await bus.reset(topic, group, time.time() + 3600)
        assert await bus.lag(topic, group) == 0


async def test_fetch_after_ack_of_part_of_a_batch_waits_for_the_rest(
    nats_url: str, tmp_path: Path
) -> None:
    """A partition with deliveries still in the application's hands is not pulled again."""
    async with started(make(nats_url, tmp_path)) as bus:
        topic, group = unique("topic"), unique("group")
        await bus_publish(bus, topic, [msg(i) for i in range(4)])
        first = await bus.fetch(topic, group, 2, 5.0)
        assert await bus.fetch(topic, group, 2, 0.3) == []
        await bus.ack(first)
        second = await bus.fetch(topic, group, 2, 5.0)
        assert [d.payload for d in second] == [b"payload-2", b"payload-3"]
        await bus.ack(second)


# -- a private server, to stop and start -------------------------------------------


class PrivateServer:
    """A nats-server of our own, with JetStream on disk, that a test may stop and start."""

    def __init__(self, binary: str, store: Path) -> None:
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("the private nats-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    binary = os.environ.get("TESSERA_NATS_SERVER") or shutil.which("nats-server")
    if not binary:
        pytest.skip("no nats-server binary to start a private server")
    server = PrivateServer(binary, tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
async def test_reconnects_when_the_server_comes_back(private_server: PrivateServer) -> None:
    server = private_server
    async with started(NatsBus(server.url, reconnect_time_wait=0.2)) as bus:
        assert await bus.publish("events", [msg(1)]) == [True]
        server.stop()
        await asyncio.sleep(0.3)
        began = time.monotonic()
        with pytest.raises(BusUnavailable):
            await bus.publish("events", [msg(2)])
        with pytest.raises(BusUnavailable):
            await bus.fetch("events", "g", 10, 0.2)
        assert time.monotonic() - began < 3.0
        server.start()
        deadline = time.monotonic() + 15
        stored: list[bool] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(BusUnavailable):
                stored = await bus.publish("events", [msg(2), msg(1)])
                break
            await asyncio.sleep(0.2)
        assert stored == [True, False]
        got: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(BusUnavailable):
                batch = await bus.fetch("events", "g", 10, 0.5)
                got.extend(batch)
                await bus.ack(batch)
        assert [d.payload for d in got] == [b"payload-1", b"payload-2"]
