"""Admitting fetched events into a subscription's lanes: the profile snapshots' reads, the
remembered envelope filter, and the one CloudEvent that the context and the body start from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tessera.activation import delivery as delivery_module
from tessera.activation.delivery import Item, Limiter, Profiles, SubscriptionRunner
from tessera.activation.destinations import Outgoing, Sender
from tessera.activation.model import SubscriptionConfig
from tessera.bus.base import Delivery
from tessera.events.envelope import Event
from tessera.store.base import IdentityLink, Profile


def event(n: int, type_: str = "com.example.crm.contact.updated", source: str = "crm",
          email: str | None = None) -> Event:
    return Event(id=f"e{n}", source="https://crm.example.com", type=type_, time=0.0,
                 received_at=0.0, source_name=source, data={"n": n},
                 identifiers=[("email", email or f"p{n}@example.com")])


class FakeStore:
    """What :class:`Profiles` reads: ``applied`` says yes after ``not_before`` looks."""

    def __init__(self, not_before: int = 0) -> None:
        self.not_before = not_before
        self.applied_calls = 0
        self.reads = 0

    def applied(self, uids: Sequence[str]) -> set[str]:
        self.applied_calls += 1
        return set(uids) if self.applied_calls > self.not_before else set()

    def resolve(self, identifier: str) -> str | None:
        return "prf_" + identifier.partition(":")[2]

    def get_profile(self, profile_id: str) -> Profile:
        self.reads += 1
        email = profile_id.removeprefix("prf_")
        profile = Profile(id=profile_id, created_at=0.0, updated_at=0.0, event_count=1)
        profile.identities = [IdentityLink("email", email, profile_id, "u", 0.0, "crm", "")]
        return profile


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(delivery_module.asyncio, "to_thread", counted)
    return hops


async def test_applied_events_are_checked_and_read_in_one_thread_hop(
    thread_hops: list[str],
) -> None:
    store = FakeStore()
    events = [event(1), event(2), event(3, email="p1@example.com")]
    snaps = await Profiles(store).snapshots("events", events)  # type: ignore[arg-type]
    assert len(thread_hops) == 1
    assert store.applied_calls == 1
    assert store.reads == 2  # one read per profile in a batch, not per event
    assert snaps[events[0].uid] is snaps[events[2].uid]
    assert snaps[events[1].uid]["id"] == "prf_p2@example.com"  # type: ignore[index]


async def test_snapshots_wait_until_the_processor_applied_the_events(
    thread_hops: list[str],
) -> None:
    store = FakeStore(not_before=2)
    snaps = await Profiles(store).snapshots("events", [event(1)])  # type: ignore[arg-type]
    assert store.applied_calls == 3 and len(thread_hops) == 3
    assert store.reads == 1  # read only once applied
    assert snaps[event(1).uid]["id"] == "prf_p1@example.com"  # type: ignore[index]


async def test_snapshots_are_read_anyway_once_the_wait_is_over() -> None:
    store = FakeStore(not_before=1_000_000)
    profiles = Profiles(store, wait_seconds=0.0)  # type: ignore[arg-type]
    snaps = await profiles.snapshots("events", [event(1)])
    assert store.reads == 1 and snaps[event(1).uid] is not None


async def test_derived_topics_are_not_waited_for(thread_hops: list[str]) -> None:
    store = FakeStore(not_before=1_000_000)
    await Profiles(store).snapshots("derived", [event(1)])  # type: ignore[arg-type]
    assert store.applied_calls == 0 and len(thread_hops) == 1


class NoBus:
    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        raise AssertionError(error)


class NoSender(Sender):
    async def send(self, message: Outgoing) -> None:
        raise AssertionError("not sent in these tests")


def runner(raw: dict[str, Any], store: FakeStore | None = None) -> SubscriptionRunner:
    sub = SubscriptionConfig.model_validate({
        "name": "s", "destination": {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
        **raw})
    assert not isinstance(sub.destination, str)
    return SubscriptionRunner(sub, bus=NoBus(), profiles=Profiles(store or FakeStore()),  # type: ignore[arg-type]
                              state=None, sender=NoSender(), limiter=Limiter(sub.destination))  # type: ignore[arg-type]


def test_the_envelope_filter_is_remembered_per_type_and_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = delivery_module.matches_envelope

    def counted(flt: Any, e: Event) -> bool:
        calls.append(e.type)
        return real(flt, e)

    monkeypatch.setattr(delivery_module, "matches_envelope", counted)
    r = runner({"filter": {"types": ["com.example.crm.*"], "sources": ["crm"]}})
    results = [r._matches_envelope(e) for e in (
        event(1), event(2), event(3, "com.example.web.page_viewed"), event(4),
        event(5, "com.example.web.page_viewed"), event(6, source="web"))]
    assert results == [True, True, False, True, False, False]
    assert len(calls) == 3  # one look per (type, sending source, source)


def test_an_attribute_filter_is_matched_for_every_event() -> None:
    r = runner({"filter": {"attributes": {"subject": "M-1"}}})
    first, second = event(1), event(2)
    first.subject, second.subject = "M-1", "M-2"  # same type and source, other subject
    assert r._matches_envelope(first)
    assert not r._matches_envelope(second)


def delivered(events: list[Event]) -> list[Delivery]:
    return [Delivery(topic="events", group="sub:s", seq=i, id=e.uid, key=e.partition_key,
                     payload=e.to_json(), attempts=1, handle=("log", i))
            for i, e in enumerate(events, 1)]


async def admitted(r: SubscriptionRunner, events: list[Event]) -> list[Item]:
    """The items these events put in the runner's lanes (its lane tasks cancelled)."""
    await r._admit("events", delivered(events))
    for task in r.lane_tasks.values():
        task.cancel()
    return [i for lane in r.lanes.values() for i in lane]


async def test_a_condition_does_not_leak_its_context_into_the_body() -> None:
    r = runner({"filter": {"condition": {"path": "data.n", "gt": 1}}, "shape": "fat"})
    [item] = await admitted(r, [event(1), event(2)])
    body = item.message.body
    assert body["id"] == "e2" and body["data"]["event"] == {"n": 2}
    assert body["data"]["profile"]["id"] == "prf_p2@example.com"
    assert "uid" not in body and "profile" not in body  # the context's own keys
    assert r.stats.filtered_out == 1


async def test_a_projection_sees_the_context() -> None:
    r = runner({"shape": {"fields": {"who": "profile.id", "n": "data.n", "uid": "uid"}}})
    e = event(7)
    [item] = await admitted(r, [e])
    assert item.message.body["data"] == {"who": "prf_p7@example.com", "n": 7, "uid": e.uid}
    assert "uid" not in item.message.body
