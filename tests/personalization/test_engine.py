"""The personalization processor over the real bus, store and state: traits, audiences,
entry and exit events, window expiry, merges, redelivery, rebuild and batch evaluation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tessera.bus.nats import delete_streams
from tessera.config import TesseraConfig
from tessera.personalization import audiences
from tessera.personalization.batch import evaluate_all, rebuild
from tessera.personalization.engine import Personalizer
from tessera.personalization.service import PersonalizationService
from tests.personalization.helpers import DAY, Harness, config_with
from tests.personalization.helpers import harness as embedded_harness
from tests.services import require_nats, require_postgres

SECTION: dict[str, Any] = {
    "computed_traits": [
        {"name": "tows_12m", "function": "count", "filter": {"types": ["tow.completed"]},
         "window": "365d"},
        {"name": "spend", "function": "sum", "value": "data.total",
         "filter": {"types": ["booking.created"]}},
        {"name": "last_destination", "function": "last", "value": "data.destination",
         "filter": {"types": ["booking.created"]}},
    ],
    "audiences": [
        {"name": "frequent_tows", "rule": {"path": "computed.tows_12m", "gte": 2}},
        {"name": "frequent_callers",
         "rule": {"event": {"type": "ticket.created", "within": "30d", "min": 2}}},
        {"name": "towed_spenders", "rule": {"all": [{"audience": "frequent_tows"},
                                                    {"path": "computed.spend", "gte": 100}]}},
    ],
}
CONFIG = config_with(SECTION)
M1 = {"member_number": "M-1"}


Make = Callable[[TesseraConfig, Path], AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=["embedded", pytest.param("postgres+nats", marks=pytest.mark.services)])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """The embedded default, or the PostgreSQL store and state with the NATS bus."""
    if request.param == "embedded":
        yield embedded_harness
        return
    pg, nats = require_postgres(), require_nats()
    schema = f"pz_{uuid.uuid4().hex[:10]}"
    prefix = hashlib.sha1(schema.encode()).hexdigest()[:10]
    bus_url = f"{nats}?stream_prefix=TP{prefix}&subject_prefix=tp{prefix}"

    @contextlib.asynccontextmanager
    async def build(config: TesseraConfig, data: Path) -> AsyncIterator[Harness]:
        async with embedded_harness(config, data, bus_url, f"{pg}?schema={schema}") as h:
            yield h

    yield build
    await delete_streams(nats, f"TP{prefix}")
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def seg(events: list[Any]) -> list[tuple[str, str, str]]:
    return [(e.type, e.data["segment"], e.data["reason"]) for e in events]


async def test_traits_update_as_events_arrive_and_entry_names_its_cause(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        first = h.event(M1, "tow.completed")
        await h.send(first, h.event({**M1, "total": 60.0, "destination": "Rome"},
                                    "booking.created"))
        await h.process()
        pid = h.pid("member_number:M-1")
        assert h.reads.computed_of(pid) == {"tows_12m": 1, "spend": 60.0,
                                            "last_destination": "Rome"}
        assert h.reads.segments_of(pid) == []
        assert await h.derived("segment.entered") == []

        second = h.event(M1, "tow.completed")
        await h.send(h.event({**M1, "total": 50.0, "destination": "Oslo"}, "booking.created"),
                     second)
        await h.process()
        assert h.reads.computed_of(pid) == {"tows_12m": 2, "spend": 110.0,
                                            "last_destination": "Oslo"}
        assert [s["segment"] for s in h.reads.segments_of(pid)] == ["frequent_tows",
                                                                    "towed_spenders"]
        entered = await h.derived("segment.entered")
        assert seg(entered) == [("segment.entered", "frequent_tows", "event"),
                                ("segment.entered", "towed_spenders", "event")]
        assert entered[0].data["profile_id"] == pid
        assert entered[0].identifiers == [("profile_id", pid)]
        # the cause is the profile's last event of the batch evaluated: here the second tow
        assert entered[0].data["caused_by"] == {"uid": second.uid, "type": "tow.completed",
                                                "received_at": second.received_at}
        assert h.service.stats.entered == 2


async def test_a_redelivered_event_changes_nothing(tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event(M1, "tow.completed"), h.event(M1, "tow.completed"))
        await h.process()
        await h.runtime.bus.reset("events", "personalization", 0.0)
        await h.process()
        pid = h.pid("member_number:M-1")
        assert h.reads.computed_of(pid)["tows_12m"] == 2
        assert len(await h.derived("segment.entered")) == 1


async def test_a_window_edge_passing_makes_the_profile_leave_without_any_event(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        start = h.clock.now
        await h.send(h.event(M1, "ticket.created", at=start - 10 * DAY),
                     h.event(M1, "ticket.created", at=start - 2 * DAY))
        await h.process()
        pid = h.pid("member_number:M-1")
        assert [s["segment"] for s in h.reads.segments_of(pid)] == ["frequent_callers"]
        assert await h.service.expire_due() == 0  # nothing due yet

        h.clock.now = start + 21 * DAY  # the older ticket is more than 30 days old now
        assert await h.service.expire_due() == 1
        assert h.reads.segments_of(pid) == []
        exited = await h.derived("segment.exited")
        assert seg(exited) == [("segment.exited", "frequent_callers", "window")]
        assert "member_since" in exited[0].data
        # the aggregate was pruned; the next edge is the second ticket's
        assert await h.service.expire_due() == 0
        h.clock.now = start + 29 * DAY
        assert await h.service.expire_due() == 1
        assert len(await h.derived("segment.exited")) == 1  # no second exit: not a member


async def test_a_merge_combines_aggregates_and_the_merged_profile_leaves(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event(M1, "tow.completed"),
                     h.event({**M1, "total": 500.0}, "booking.created"),
                     h.event({"email": "jo@example.com"}, "tow.completed"),
                     h.event({"email": "jo@example.com"}, "tow.completed"))
        await h.process()
        member, anonymous = h.pid("member_number:M-1"), h.pid("email:jo@example.com")
        assert member != anonymous
        assert [s["segment"] for s in h.reads.segments_of(anonymous)] == ["frequent_tows"]
        # one event with both identifiers merges them: 3 tows, and the spend
        await h.send(h.event({**M1, "email": "jo@example.com"}, "profile.seen"))
        await h.process()
        # the member number has the highest priority: its profile survives
        survivor, gone = member, anonymous
        assert h.pid("email:jo@example.com") == survivor
        assert h.reads.computed_of(survivor)["tows_12m"] == 3
        assert h.reads.computed_of(survivor)["spend"] == 500.0
        assert h.reads.segments_of(gone) == []
        assert h.service.state.trait_states_of(gone) == {}
        assert {s["segment"] for s in h.reads.segments_of(survivor)} == {"frequent_tows",
                                                                        "towed_spenders"}
        exits = [e for e in await h.derived("segment.exited") if e.data["reason"] == "merged"]
        assert [(e.data["profile_id"], e.data["segment"]) for e in exits] == [
            (gone, "frequent_tows")]


async def test_rebuild_recomputes_from_the_timeline(tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        await h.send(*[h.event(M1, "tow.completed") for _ in range(3)],
                     h.event({**M1, "total": 120.0}, "booking.created"),
                     h.event({"email": "a@example.com"}, "ticket.created"))
        await h.process()
        pid = h.pid("member_number:M-1")
        before = h.reads.computed_of(pid), h.reads.segments_of(pid)
        entered = len(await h.derived("segment.entered"))

        h.service.state.reset()  # lose everything
        assert h.reads.computed_of(pid)["tows_12m"] == 0
        report = rebuild(Personalizer(CONFIG.personalization, h.runtime.store,
                                      h.service.state))
        assert report.profiles == 2
        assert h.reads.computed_of(pid) == before[0]
        assert [s["segment"] for s in h.reads.segments_of(pid)] == [
            s["segment"] for s in before[1]]
        # the reset dropped the memberships, so the rebuild re-enters them (and says so)
        await h.service.relay()
        assert len(await h.derived("segment.entered")) == entered * 2

        # a rebuild over an intact state changes no membership and emits nothing
        report = rebuild(Personalizer(CONFIG.personalization, h.runtime.store,
                                      h.service.state))
        assert (report.entered, report.exited) == (0, 0)


async def test_batch_evaluation_applies_a_changed_rule(tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        m2 = {"member_number": "M-2"}
        await h.send(h.event(M1, "tow.completed"), h.event(m2, "tow.completed"),
                     h.event(m2, "tow.completed"), h.event({**m2, "total": 150.0},
                                                           "booking.created"))
        await h.process()
        assert h.reads.sizes()["frequent_tows"] == 1
        assert h.reads.sizes()["towed_spenders"] == 1
        looser = config_with({**SECTION, "audiences": [
            {"name": "frequent_tows", "rule": {"path": "computed.tows_12m", "gte": 1}}]})
        engine = Personalizer(looser.personalization, h.runtime.store, h.service.state)
        report = evaluate_all(engine)
        assert (report.profiles, report.entered, report.exited) == (2, 1, 0)
        # towed_spenders is no longer configured: a batch evaluation leaves its members
        # alone, and the processor started with the new configuration makes them exit
        assert h.service.state.sizes() == {"frequent_tows": 2, "towed_spenders": 1}
        service = PersonalizationService(looser.personalization, h.runtime.bus,
                                         h.runtime.store, h.service.state)
        await service.run_until_idle()
        assert h.service.state.sizes() == {"frequent_tows": 2}
        assert seg(await h.derived("segment.exited")) == [
            ("segment.exited", "towed_spenders", "deleted")]


async def test_a_saved_audience_is_filled_in_and_its_deletion_makes_members_exit(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        m2 = {"member_number": "M-2"}
        await h.send(h.event(M1, "tow.completed"), h.event(m2, "booking.created"))
        await h.process()
        towed = {"name": "towed", "rule": {"path": "computed.tows_12m", "gte": 1}}
        await asyncio.to_thread(audiences.save, CONFIG.personalization, h.service.state, towed)
        # a second saved audience built on the first one
        await asyncio.to_thread(audiences.save, CONFIG.personalization, h.service.state, {
            "name": "towed_or_frequent", "rule": {"any": [{"audience": "towed"},
                                                          {"audience": "frequent_tows"}]}})
        await h.process()
        one = h.pid("member_number:M-1")
        assert h.service.state.memberships_of(one).keys() == {"towed", "towed_or_frequent"}
        assert h.service.state.memberships_of(h.pid("member_number:M-2")) == {}
        assert sorted(seg(await h.derived("segment.entered"))) == [
            ("segment.entered", "towed", "saved"),
            ("segment.entered", "towed_or_frequent", "saved")]
        assert all(a.evaluated for a in h.service.state.saved_audiences())

        # a new event is evaluated against the saved audience like any other
        await h.send(h.event(m2, "tow.completed"))
        await h.process()
        assert h.service.state.memberships_of(h.pid("member_number:M-2")).keys() == {
            "towed", "towed_or_frequent"}

        await asyncio.to_thread(audiences.delete, CONFIG.personalization, h.service.state,
                                "towed_or_frequent")
        await h.process()
        exits = seg(await h.derived("segment.exited"))
        assert exits == [("segment.exited", "towed_or_frequent", "deleted")] * 2
        assert "towed_or_frequent" not in h.service.state.sizes()
        assert h.service.state.sizes()["towed"] == 2


async def test_offer_outcomes_go_to_the_offer_history(tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        now = h.clock.now
        await h.send(h.event({**M1, "action": "upgrade", "channel": "email"},
                             "com.example.contact_center.offer.presented", at=now - 2),
                     h.event({**M1, "action": "upgrade"}, "offer.declined", at=now - 1),
                     h.event({**M1}, "offer.accepted"))  # no action: not an outcome
        await h.process()
        offers = h.service.state.offers_of(h.pid("member_number:M-1"))
        assert [(o.action, o.channel, o.outcome) for o in offers] == [
            ("upgrade", "email", "presented"), ("upgrade", "unknown", "declined")]


async def test_unattributed_events_and_other_derived_events_are_skipped(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event({"nothing": 1}, "tow.completed"))
        await h.process()
        assert h.service.state.profile_ids() == []
        assert await h.runtime.bus.lag("events", "personalization") == 0
        assert await h.runtime.bus.lag("derived", "personalization") == 0


async def test_a_failing_event_is_retried_then_dead_lettered_and_holds_back_nothing(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        h.service.retry_backoff = 0.0
        bad = h.event({"member_number": "M-9"}, "tow.completed")
        good = [h.event(M1, "tow.completed"), h.event(M1, "tow.completed")]
        real = h.service.engine.apply

        def apply(pairs: Any) -> Any:
            if any(e.uid == bad.uid for e, _ in pairs):
                raise ValueError("cannot aggregate this one")
            return real(pairs)

        h.service.engine.apply = apply  # type: ignore[method-assign]
        await h.send(good[0], bad, good[1])
        for _ in range(h.service.max_attempts + 1):
            await h.process()
        pid = h.pid("member_number:M-1")
        assert h.reads.computed_of(pid)["tows_12m"] == 2
        letters = await h.runtime.bus.dead_letters("personalization")
        assert [d.message_id for d in letters] == [bad.uid]
        assert "cannot aggregate this one" in letters[0].error
        assert letters[0].attempts == h.service.max_attempts
        assert await h.runtime.bus.lag("events", "personalization") == 0


async def test_the_entry_names_the_event_that_caused_it_not_a_later_one(
        tmp_path: Path, make: Make) -> None:
    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event(M1, "tow.completed"))
        await h.process()
        cause = h.event(M1, "tow.completed")
        # the same batch goes on with other events of the member after the cause
        await h.send(cause, h.event({**M1, "total": 5.0}, "booking.created"),
                     h.event(M1, "page.viewed"))
        await h.process()
        entered = await h.derived("segment.entered")
        assert [(e.data["segment"], e.data["caused_by"]["uid"]) for e in entered] == [
            ("frequent_tows", cause.uid)]


async def test_an_erased_person_leaves_every_audience_and_is_forgotten(
        tmp_path: Path, make: Make) -> None:
    from tessera.bus.base import Message
    from tessera.events.envelope import Event

    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event(M1, "tow.completed"), h.event(M1, "tow.completed"),
                     h.event({**M1, "action": "upgrade"}, "offer.presented"),
                     h.event({"member_number": "M-2"}, "tow.completed"))
        await h.process()
        pid, other = h.pid("member_number:M-1"), h.pid("member_number:M-2")
        erased = Event(id="req-1:profile.erased", source="tessera/privacy",
                       type="profile.erased", time=h.clock.now, received_at=h.clock.now,
                       source_name="tessera", data={"profile_id": pid, "merged_profile_ids": []},
                       identifiers=[("profile_id", pid)])
        await h.runtime.bus.publish("derived", [Message(erased.uid, pid, erased.to_json())])
        await h.process()
        assert pid not in h.service.state.profile_ids()
        assert h.service.state.offers_of(pid) == []
        assert h.service.state.sizes() == {}
        assert other in h.service.state.profile_ids()
        exits = await h.derived("segment.exited")
        assert [(e.data["profile_id"], e.data["segment"], e.data["reason"]) for e in exits] == [
            (pid, "frequent_tows", "erased")]


async def test_an_unmerge_recomputes_both_profiles_from_their_timelines(
        tmp_path: Path, make: Make) -> None:
    from tessera.bus.base import Message
    from tessera.identity.unmerge import unmerged_event

    async with make(CONFIG, tmp_path) as h:
        jo = {"email": "jo@example.com"}
        theirs = [h.event(jo, "tow.completed"), h.event(jo, "tow.completed")]
        await h.send(h.event(M1, "tow.completed"), *theirs)
        await h.process()
        member, anonymous = h.pid("member_number:M-1"), h.pid("email:jo@example.com")
        await h.send(h.event({**M1, **jo}, "profile.seen"))
        await h.process()
        assert h.reads.computed_of(member)["tows_12m"] == 3
        with h.runtime.store.transaction() as tx:
            try:
                tx.split(member, anonymous, [("email", "jo@example.com")],
                         [e.uid for e in theirs], h.clock.now)
            except NotImplementedError:
                pytest.skip("this store cannot split profiles")
        event = unmerged_event(member, anonymous, h.clock.now)
        await h.runtime.bus.publish("derived", [Message(event.uid, member, event.to_json())])
        await h.process()
        assert h.reads.computed_of(member)["tows_12m"] == 1
        assert h.reads.computed_of(anonymous)["tows_12m"] == 2
        assert [s["segment"] for s in h.reads.segments_of(anonymous)] == ["frequent_tows"]
        assert h.reads.segments_of(member) == []


@pytest.mark.parametrize("since", [None, 1_700_000_000.25])
def test_segment_event_row_is_the_envelope_it_stands_for(since: float | None) -> None:
    """The outbox row is built without an ``Event``; what the outbox publishes for it is the
    event's own JSON, byte for byte."""
    from tessera.events import DERIVED_TOPIC
    from tessera.events.envelope import Event, iso_time
    from tessera.personalization.engine import Cause
    from tessera.personalization.state.outbox import ENTERED, EXITED, MARK, SOURCE, published

    cause = Cause("evt-1", "event", "tow.completed", 1_700_000_100.5)
    kind = EXITED if since is not None else ENTERED
    row = Personalizer.segment_event(kind, "frequent_tows", "p_1", cause, 1_700_000_200.0,
                                     since=since)
    assert row[3].startswith(MARK)  # the outbox keeps a compact record
    assert len(row[3]) < 200
    [(topic, uid, key, payload)] = published(*row)  # what the outbox gives the bus
    event = Event.from_json(payload)
    data: dict[str, Any] = {
        "profile_id": "p_1", "segment": "frequent_tows", "reason": "event",
        "at": iso_time(1_700_000_200.0),
        "caused_by": {"uid": "evt-1", "type": "tow.completed", "received_at": 1_700_000_100.5},
    }
    if since is not None:
        data["member_since"] = iso_time(since)
    digest = hashlib.blake2b(f"evt-1\x1f{kind}\x1ffrequent_tows\x1fp_1".encode(),
                             digest_size=16).hexdigest()
    expected = Event(id=f"seg_{digest}", source=SOURCE, type=kind, time=1_700_000_200.0,
                     received_at=1_700_000_200.0, source_name="tessera", data=data,
                     identifiers=[("profile_id", "p_1")], subject="p_1",
                     datacontenttype="application/json",
                     extensions={"tesserasegment": "frequent_tows"}, uid=digest)
    assert event == expected
    assert payload == expected.to_json()
    assert (topic, uid, key) == (DERIVED_TOPIC, expected.uid, expected.partition_key)


async def test_batch_evaluation_in_two_processes_gives_what_one_gives(
        tmp_path: Path, make: Make) -> None:
    """The profiles split over two spawned processes: the same memberships, the same
    entry events (ids included), as evaluating in this process."""
    from tessera.personalization.batch import EngineSpec

    looser = config_with({**SECTION, "audiences": [
        {"name": "towed", "rule": {"path": "computed.tows_12m", "gte": 1}},
        {"name": "spenders", "rule": {"path": "computed.spend", "gte": 100}}]})
    results = []
    for processes in (1, 2):
        async with make(CONFIG, tmp_path / f"p{processes}") as h:
            people = [{"member_number": f"M-{i}"} for i in range(40)]
            await h.send(*[h.event(p, "tow.completed", event_id=f"t{i}")
                           for i, p in enumerate(people) if i % 2 == 0],
                         *[h.event({**p, "total": 150.0}, "booking.created", event_id=f"b{i}")
                           for i, p in enumerate(people) if i % 3 == 0])
            await h.process()
            engine = Personalizer(looser.personalization, h.runtime.store, h.service.state)
            report = evaluate_all(engine, chunk=7, run="batch:fixed", processes=processes,
                                  spec=EngineSpec.of(h.runtime, engine))
            await h.service.relay()
            events = await h.derived("segment.entered")
            members = {}
            for p in people:
                found = h.runtime.store.resolve(f"member_number:{p['member_number']}")
                members[p["member_number"]] = (
                    None if found is None else sorted(h.service.state.memberships_of(found)))
            results.append(((report.profiles, report.entered, report.exited), members,
                            sorted((e.data["segment"], e.data["reason"]) for e in events
                                   if e.data["reason"] == "batch")))
    assert results[0] == results[1]
    (profiles, entered, _), members, _ = results[0]
    # towed: the 20 even members; spenders: the 14 multiples of 3; M-1 has no profile
    assert profiles == 27 and entered == 20 + 14
    assert members["M-0"] == ["spenders", "towed"] and members["M-2"] == ["towed"]
    assert members["M-3"] == ["spenders"] and members["M-1"] is None


async def test_batch_evaluation_sees_a_change_made_while_it_evaluated(
        tmp_path: Path, make: Make) -> None:
    """Evaluation runs outside the state's write lock; a profile whose aggregates change
    in between is evaluated again under the lock, so the change is not overwritten."""
    async with make(CONFIG, tmp_path) as h:
        await h.send(h.event(M1, "tow.completed"))
        await h.process()
        pid = h.pid("member_number:M-1")
        strict = config_with({**SECTION, "audiences": [
            {"name": "twice_towed", "rule": {"path": "computed.tows_12m", "gte": 2}}]})
        engine = Personalizer(strict.personalization, h.runtime.store, h.service.state)
        original = engine.wanted
        second_tow = h.event(M1, "tow.completed")
        changed: list[bool] = []

        def wanted_then_change(*args: Any, **kwargs: Any) -> set[str]:
            result = original(*args, **kwargs)
            if not changed:  # the first evaluation saw one tow: now a second one lands
                changed.append(True)
                h.service.engine.apply([(second_tow, pid)])
            return result

        engine.wanted = wanted_then_change  # type: ignore[method-assign]
        report = evaluate_all(engine)
        assert changed and report.entered == 1
        assert "twice_towed" in h.service.state.memberships_of(pid)


async def test_batch_evaluation_goes_on_while_the_store_is_written(
        tmp_path: Path, make: Make) -> None:
    """Events applied to the store while a batch evaluation runs (the profiles processor
    keeps working) do not stop it: it holds no read cursor open across its writes."""
    import threading

    async with make(CONFIG, tmp_path) as h:
        await h.send(*[h.event({"member_number": f"M-{i}"}, "tow.completed")
                       for i in range(12)])
        await h.process()
        engine = Personalizer(CONFIG.personalization, h.runtime.store, h.service.state)
        original = engine.read_profiles
        writes = 0

        def read_then_another_writes(pids: Any) -> Any:
            nonlocal writes
            out = original(pids)
            writes += 1
            event = h.event({"member_number": f"N-{writes}"}, "tow.completed")
            # another thread has its own connection: a second writer, as a worker is
            writer = threading.Thread(target=h.runtime.processor.apply, args=([event],))
            writer.start()
            writer.join()
            return out

        engine.read_profiles = read_then_another_writes  # type: ignore[method-assign]
        report = evaluate_all(engine, chunk=5)
        assert writes == 3 and report.profiles == 12
