"""The consume loop: poison events go to dead letters without blocking; replay after a fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from tessera.bus.base import Message
from tessera.cli import app
from tessera.config import default_config
from tessera.events.envelope import Event
from tessera.profiles.traits import TraitExtractor
from tessera.runtime import Runtime


def make_event(n: int, email: str) -> Event:
    return Event(id=f"e{n}", source="test", type="com.example.crm.contact.updated",
                 time=1000.0 + n, received_at=1000.0 + n, source_name="crm",
                 data={"email": email, "traits": {"n": n}},
                 identifiers=[("email", email)])


class Poisoned(TraitExtractor):
    """Fails on events whose data says so, like a bug in a rule would."""

    broken = True

    def extract(self, event: Event) -> dict[str, Any]:
        if self.broken and event.data.get("traits", {}).get("n") == 2:
            raise ValueError("cannot handle event 2")
        return super().extract(event)


async def publish(runtime: Runtime, events: list[Event]) -> None:
    await runtime.bus.publish("events", [Message(e.uid, e.partition_key, e.to_json())
                                         for e in events])


async def test_poison_event_is_dead_lettered_and_does_not_block(tmp_path: Path) -> None:
    config = default_config()
    runtime = Runtime(config, tmp_path)
    await runtime.start()
    poisoned = Poisoned(config)
    runtime.processor.traits = poisoned
    worker = runtime.worker()
    worker.config = worker.config.model_copy(update={"max_attempts": 3,
                                                     "retry_backoff_seconds": 0.01})
    try:
        await publish(runtime, [make_event(n, f"p{n}@example.com") for n in range(5)])
        for _ in range(20):
            await worker.run_until_idle(timeout=0.05)
        counts = runtime.store.counts()
        assert counts["events_applied"] == 4  # all but the poison one
        assert runtime.store.resolve("email:p4@example.com") is not None
        letters = await runtime.bus.dead_letters("profiles")
        assert len(letters) == 1
        assert "cannot handle event 2" in letters[0].error
        assert letters[0].attempts == 3
        assert orjson.loads(letters[0].payload)["id"] == "e2"
        assert await runtime.bus.lag("events", "profiles") == 0

        # the bug is fixed: replay the dead letter and it is applied once
        poisoned.broken = False
        assert await runtime.bus.replay_dead_letter(letters[0].id)
        await worker.run_until_idle(timeout=0.05)
        assert runtime.store.counts()["events_applied"] == 5
        assert runtime.store.resolve("email:p2@example.com") is not None
        assert await runtime.bus.dead_letters("profiles") == []
    finally:
        await runtime.close()


async def test_undecodable_message_is_dead_lettered_at_once(tmp_path: Path) -> None:
    runtime = Runtime(default_config(), tmp_path)
    await runtime.start()
    try:
        await runtime.bus.publish("events", [Message("junk", "k", b"not json")])
        await publish(runtime, [make_event(1, "ok@example.com")])
        await runtime.worker().run_until_idle(timeout=0.05)
        letters = await runtime.bus.dead_letters()
        assert [d.message_id for d in letters] == ["junk"]
        assert letters[0].error.startswith("undecodable event")
        assert runtime.store.resolve("email:ok@example.com") is not None
    finally:
        await runtime.close()


async def test_derived_events_reach_the_bus(tmp_path: Path) -> None:
    runtime = Runtime(default_config(), tmp_path)
    await runtime.start()
    try:
        a = make_event(1, "a@example.com")
        b = Event(id="e2", source="test", type="t", time=1.0, received_at=1.0,
                  source_name="crm", data={"user_id": "u1"}, identifiers=[("user_id", "u1")])
        both = Event(id="e3", source="test", type="t", time=2.0, received_at=2.0,
                     source_name="crm", data={}, identifiers=[("user_id", "u1"),
                                                              ("email", "a@example.com")])
        await publish(runtime, [a, b, both])
        await runtime.worker().run_until_idle(timeout=0.05)
        derived = await runtime.bus.fetch("derived", "reader", 100, 1.0)
        types = [orjson.loads(d.payload)["type"] for d in derived]
        assert types.count("identity.merged") == 1
        assert "profile.updated" in types
        assert runtime.store.pending_outbox(10) == []
    finally:
        await runtime.close()


def test_dlq_cli_lists_shows_and_replays(tmp_path: Path) -> None:
    import asyncio

    async def setup() -> None:
        runtime = Runtime(default_config(), tmp_path)
        await runtime.start()
        await runtime.bus.publish("events", [Message("bad-1", "k", b"{broken")])
        await runtime.worker().run_until_idle(timeout=0.05)
        await runtime.close()

    asyncio.run(setup())
    runner = CliRunner()
    listed = runner.invoke(app, ["dlq", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "bad-1" in listed.output and "1 dead letter(s)" in listed.output
    shown = runner.invoke(app, ["dlq", "show", "1", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert '"message_id": "bad-1"' in shown.output and "undecodable" in shown.output
    replayed = runner.invoke(app, ["dlq", "replay", "1", "--data-dir", str(tmp_path)])
    assert replayed.exit_code == 0, replayed.output
    assert "1 dead letter(s) queued" in replayed.output
    missing = runner.invoke(app, ["dlq", "replay", "99", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 1


def test_replay_rebuild_rederives_profiles(tmp_path: Path) -> None:
    import asyncio

    async def load() -> None:
        runtime = Runtime(default_config(), tmp_path)
        await runtime.start()
        await publish(runtime, [make_event(n, f"r{n % 3}@example.com") for n in range(9)])
        await runtime.worker().run_until_idle(timeout=0.05)
        await runtime.close()

    asyncio.run(load())
    runner = CliRunner()
    result = runner.invoke(app, ["replay", "--group", "profiles", "--from", "beginning",
                                 "--rebuild", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "9 event(s) will be delivered again" in result.output

    async def check() -> None:
        runtime = Runtime(default_config(), tmp_path)
        await runtime.start()
        assert runtime.store.counts()["profiles"] == 0
        await runtime.worker().run_until_idle(timeout=0.05)
        assert runtime.store.counts() == {"profiles": 3, "identities": 3,
                                          "events_applied": 9, "merges": 0}
        profile = runtime.store.get_profile(runtime.store.resolve("email:r1@example.com") or "")
        assert profile is not None and profile.event_count == 3
        await runtime.close()

    asyncio.run(check())


async def test_store_outage_retries_without_dead_lettering(tmp_path: Path) -> None:
    import asyncio

    from tessera.store.base import StoreUnavailable

    runtime = Runtime(default_config(), tmp_path)
    await runtime.start()
    real_apply = runtime.processor.apply
    outage = {"left": 4}

    def flaky_apply(events: Any, retries: int = 8) -> Any:
        if outage["left"] > 0:
            outage["left"] -= 1
            raise StoreUnavailable("connection refused")
        return real_apply(events, retries)

    runtime.processor.apply = flaky_apply  # type: ignore[method-assign]
    worker = runtime.worker()
    worker.config = worker.config.model_copy(update={"max_attempts": 2})
    try:
        await publish(runtime, [make_event(n, f"o{n}@example.com") for n in range(3)])
        task = asyncio.create_task(worker.run(idle_timeout=0.05))
        for _ in range(800):  # each outage costs about 2 s of backing off; bounded at 40 s
            if runtime.store.counts()["events_applied"] == 3:
                break
            await asyncio.sleep(0.05)
        worker.stop()
        await task
        assert outage["left"] == 0
        assert runtime.store.counts()["events_applied"] == 3
        assert await runtime.bus.dead_letters() == []
    finally:
        await runtime.close()


def test_worker_refuses_an_unknown_processor_by_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["worker", "--data-dir", str(tmp_path), "--processors", "profiles,billing"])
    assert result.exit_code == 2
    assert "--processors" in result.output and "'billing'" in result.output
    assert "profiles, activation" in result.output  # says what exists
