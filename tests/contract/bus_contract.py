"""The bus contract: every backend's test module subclasses :class:`BusContract`.

A subclass provides ``make_bus(tmp_path)``; every test here then runs against
that backend unchanged. Topic and group names are unique per test, so the
tests can share one real server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.bus.base import Bus, Message


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def msg(n: int, key: str = "k") -> Message:
    return Message(id=f"m{n}", key=key, payload=f"payload-{n}".encode())


class BusContract:
    async def make_bus(self, tmp_path: Path) -> Bus:
        raise NotImplementedError

    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[Bus]:
        bus = await self.make_bus(tmp_path)
        await bus.start()
        try:
            yield bus
        finally:
            await bus.close()

    @pytest.fixture
    def topic(self) -> str:
        return unique("topic")

    @pytest.fixture
    def group(self) -> str:
        return unique("group")

    async def fetch_all(
        self, bus: Bus, topic: str, group: str, expect: int, timeout: float = 10.0, ack: bool = True
    ) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            batch = await bus.fetch(topic, group, 100, 0.5)
            got.extend(d.payload for d in batch)
            if ack:
                await bus.ack(batch)
        return got

    async def test_publish_then_fetch_in_order(self, bus: Bus, topic: str, group: str) -> None:
        stored = await bus.publish(topic, [msg(i) for i in range(20)])
        assert stored == [True] * 20
        got = await self.fetch_all(bus, topic, group, 20)
        assert got == [f"payload-{i}".encode() for i in range(20)]

    async def test_duplicate_ids_are_stored_once(self, bus: Bus, topic: str, group: str) -> None:
        assert await bus.publish(topic, [msg(1), msg(2)]) == [True, True]
        assert await bus.publish(topic, [msg(2), msg(3)]) == [False, True]
        got = await self.fetch_all(bus, topic, group, 3)
        assert got == [b"payload-1", b"payload-2", b"payload-3"]
        assert await bus.fetch(topic, group, 10, 0.3) == []

    async def test_each_group_sees_every_message(self, bus: Bus, topic: str) -> None:
        await bus.publish(topic, [msg(i) for i in range(5)])
        for group in (unique("a"), unique("b")):
            got = await self.fetch_all(bus, topic, group, 5)
            assert len(got) == 5

    async def test_acked_messages_are_not_redelivered(
        self, bus: Bus, topic: str, group: str, tmp_path: Path
    ) -> None:
        await bus.publish(topic, [msg(i) for i in range(6)])
        first = await bus.fetch(topic, group, 3, 5.0)
        assert [d.payload for d in first] == [b"payload-0", b"payload-1", b"payload-2"]
        await bus.ack(first)
        await bus.close()
        reopened = await self.make_bus(tmp_path)
        await reopened.start()
        try:
            rest = await self.fetch_all(reopened, topic, group, 3)
            assert rest == [b"payload-3", b"payload-4", b"payload-5"]
        finally:
            await reopened.close()

    async def test_unacked_messages_are_redelivered_after_restart(
        self, bus: Bus, topic: str, group: str, tmp_path: Path
    ) -> None:
        await bus.publish(topic, [msg(i) for i in range(3)])
        got = await bus.fetch(topic, group, 3, 5.0)
        assert len(got) == 3
        await bus.close()  # no ack: a consumer that died
        reopened = await self.make_bus(tmp_path)
        await reopened.start()
        try:
            again = await self.fetch_all(reopened, topic, group, 3, timeout=40.0)
            assert sorted(again) == [b"payload-0", b"payload-1", b"payload-2"]
        finally:
            await reopened.close()

    async def test_nack_redelivers_with_attempt_count(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        await bus.publish(topic, [msg(1)])
        first = await bus.fetch(topic, group, 1, 5.0)
        assert first[0].attempts == 1
        await bus.nack(first, 0.1)
        second: list = []
        deadline = time.monotonic() + 10
        while not second and time.monotonic() < deadline:
            second = await bus.fetch(topic, group, 1, 0.5)
        assert second and second[0].payload == b"payload-1"
        assert second[0].attempts == 2
        await bus.ack(second)

    async def test_dead_letter_keeps_error_and_unblocks(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        await bus.publish(topic, [msg(1), msg(2)])
        first = await bus.fetch(topic, group, 1, 5.0)
        await bus.dead_letter(first[0], "ValueError: bad payload")
        rest = await self.fetch_all(bus, topic, group, 1)
        assert rest == [b"payload-2"]
        letters = await bus.dead_letters(group)
        assert len(letters) == 1
        assert letters[0].payload == b"payload-1"
        assert letters[0].error == "ValueError: bad payload"
        assert letters[0].message_id == "m1"

    async def test_replayed_dead_letter_comes_back_to_its_group(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        other = unique("other")
        await bus.publish(topic, [msg(1)])
        first = await bus.fetch(topic, group, 1, 5.0)
        await bus.dead_letter(first[0], "boom")
        assert await self.fetch_all(bus, topic, other, 1) == [b"payload-1"]
        letter = (await bus.dead_letters(group))[0]
        assert await bus.replay_dead_letter(letter.id)
        again = await self.fetch_all(bus, topic, group, 1)
        assert again == [b"payload-1"]
        assert await bus.dead_letters(group) == []
        assert await bus.fetch(topic, other, 10, 0.3) == []

    async def test_a_replayed_dead_letter_is_handed_out_once_while_in_flight(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        """Like any message: fetched once until acknowledged, and newer messages keep
        flowing meanwhile (a consumer never sees the same replay twice at once)."""
        await bus.publish(topic, [msg(1)])
        first = await bus.fetch(topic, group, 1, 5.0)
        await bus.dead_letter(first[0], "boom")
        letter = (await bus.dead_letters(group))[0]
        assert await bus.replay_dead_letter(letter.id)
        await bus.publish(topic, [msg(2), msg(3)])
        seen: list[bytes] = []
        held = []
        deadline = time.monotonic() + 15
        while len(seen) < 3 and time.monotonic() < deadline:
            got = await bus.fetch(topic, group, 10, 0.3)
            seen += [d.payload for d in got]
            held += got  # none acknowledged yet: all in flight
        assert sorted(seen) == [b"payload-1", b"payload-2", b"payload-3"]  # each once
        assert await bus.fetch(topic, group, 10, 0.5) == []
        await bus.ack(held)
        assert await bus.dead_letters(group) == []

    async def test_lag_counts_unacked(self, bus: Bus, topic: str, group: str) -> None:
        await bus.publish(topic, [msg(i) for i in range(4)])
        deadline = time.monotonic() + 5
        while await bus.lag(topic, group) != 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await bus.lag(topic, group) == 4
        await self.fetch_all(bus, topic, group, 4)
        deadline = time.monotonic() + 5
        while await bus.lag(topic, group) != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await bus.lag(topic, group) == 0

    async def test_reset_replays_from_time(self, bus: Bus, topic: str, group: str) -> None:
        await bus.publish(topic, [msg(1)])
        await asyncio.sleep(1.1)
        cut = time.time()
        await asyncio.sleep(0.1)
        await bus.publish(topic, [msg(2), msg(3)])
        assert len(await self.fetch_all(bus, topic, group, 3)) == 3
        await bus.reset(topic, group, cut)
        again = await self.fetch_all(bus, topic, group, 2)
        assert again == [b"payload-2", b"payload-3"]

    async def test_same_key_keeps_order_under_concurrent_publishers(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        async def publisher(key: str) -> None:
            for i in range(30):
                await bus.publish(topic, [Message(f"{key}-{i}", key, f"{key}:{i}".encode())])

        await asyncio.gather(*(publisher(f"user{n}") for n in range(4)))
        got = await self.fetch_all(bus, topic, group, 120)
        assert len(got) == 120
        for n in range(4):
            mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"user{n}:".encode())]
            assert mine == list(range(30))

    async def test_erase_deletes_matching_messages_and_dead_letters(
        self, bus: Bus, topic: str, group: str
    ) -> None:
        other = unique("topic")
        await bus.publish(topic, [Message(f"m{n}", "k", f"{who}-{n}".encode())
                                  for n, who in enumerate(["jane", "bob", "jane", "bob"])])
        await bus.publish(other, [Message("o1", "k", b"jane-other"), Message("o2", "k", b"bob")])
        first = await bus.fetch(topic, group, 1, 5.0)
        assert [d.payload for d in first] == [b"jane-0"]
        await bus.dead_letter(first[0], "poison")
        removed = await bus.erase([topic], lambda payload: payload.startswith(b"jane"))
        assert removed == 3  # two in the topic, one dead letter; the other topic is not asked
        assert await bus.dead_letters(group) == []
        rest = await self.fetch_all(bus, topic, group, 2)
        assert rest == [b"bob-1", b"bob-3"]
        assert await bus.lag(topic, group) == 0
        assert sorted(await self.fetch_all(bus, other, group, 2)) == [b"bob", b"jane-other"]
