"""Webhook delivery with a real HTTP receiver: signing, retries, dead letters, order, pause."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import orjson

from tessera.activation.signing import new_secret, verify
from tests.activation.helpers import FAST_RETRY, config_with, running, wait_for, webhook
from tests.activation.receiver import Received, Receiver


async def cli(*args: str) -> tuple[int, str]:
    """``tessera ARGS`` as its own process, as an operator would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tessera", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()

MEMBERSHIP = "com.example.membership.updated"


async def test_the_issue_example_body_is_delivered_signed_and_fat(tmp_path: Path) -> None:
    secret = new_secret()
    with Receiver() as rx:
        sub = {"name": "crm-sync", "filter": {"types": ["com.example.membership.*"]},
               "shape": "fat", "destination": webhook(rx.url, secret)}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"member_number": "M-1", "email": "ann@example.com",
                          "address": "1 Main St"}, MEMBERSHIP, "membership")
            await h.send({"member_number": "M-1", "page": "/"}, "com.example.web.page_viewed")
            await wait_for(lambda: len(rx.ok()) == 1, what="one delivery")
            await asyncio.sleep(0.2)  # the page view must not follow
        got = rx.all()
    assert len(got) == 1
    req = got[0]
    # the receiver's check, as the Standard Webhooks libraries do it
    assert verify(secret, req.headers, req.body)
    assert not verify(secret, req.headers, req.body + b" ")
    assert not verify(new_secret(), req.headers, req.body)
    assert req.headers["content-type"] == "application/cloudevents+json"
    assert req.headers["webhook-signature"].startswith("v1,")
    body = req.json
    assert body["type"] == MEMBERSHIP
    assert body["specversion"] == "1.0"
    assert body["tesserasubscription"] == "crm-sync"
    assert body["data"]["event"]["address"] == "1 Main St"
    profile = body["data"]["profile"]
    assert profile["traits"]["address"] == "1 Main St"  # the snapshot after the event
    assert profile["identifiers"]["member_number"] == ["M-1"]
    assert body["tesseraprofileid"] == profile["id"]


async def test_retries_then_success_keep_one_webhook_id(tmp_path: Path) -> None:
    answers = iter([500, 503, 502])

    def respond(r: Received) -> int:
        return next(answers, 200)

    with Receiver(respond) as rx:
        sub = {"name": "s", "filter": {"types": ["t.*"]}, "shape": "event",
               "destination": webhook(rx.url), "retry": FAST_RETRY}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"email": "a@example.com"}, "t.one")
            await wait_for(lambda: len(rx.ok()) == 1, what="the delivery")
            await wait_for(lambda: h.activation.state.get("s").delivered == 1,  # type: ignore[union-attr]
                           what="the counters")
            state = h.activation.state.get("s")
        got = rx.all()
    assert [r.status for r in got] == [500, 503, 502, 200]
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert state is not None and state.failed_attempts == 3
    assert state.last_error is not None and "HTTP 502" in state.last_error


async def test_dead_letter_after_the_budget_with_the_last_error_then_replay(
        tmp_path: Path) -> None:
    broken = threading.Event()
    broken.set()
    with Receiver(lambda r: 500 if broken.is_set() else 200) as rx:
        sub = {"name": "s", "shape": "event", "destination": webhook(rx.url),
               "retry": {"initial_backoff": 0.01, "max_backoff": 0.02, "max_attempts": 3}}
        cfg = config_with(subscriptions=[sub])
        async with running(cfg, tmp_path) as h:
            first = await h.send({"email": "a@example.com"}, "t.one")
            await wait_for(lambda: len(rx.all()) == 3, what="three attempts")
            letters = []
            for _ in range(200):
                letters = await h.runtime.bus.dead_letters("sub:s")
                if letters:
                    break
                await asyncio.sleep(0.01)
            assert len(letters) == 1
            assert "HTTP 500" in letters[0].error and "after 3 attempt(s)" in letters[0].error
            # a later event of another profile is not held back by the dead one
            second = await h.send({"email": "b@example.com"}, "t.two")
            await wait_for(lambda: len(rx.all()) == 6, what="three more failed attempts")
            for _ in range(300):
                if len(await h.runtime.bus.dead_letters("sub:s")) == 2:
                    break
                await asyncio.sleep(0.01)
            assert len(await h.runtime.bus.dead_letters("sub:s")) == 2
            broken.clear()
            # the fix is in: replay the subscription's dead letters from the command line
            result = await cli("dlq", "replay", "--subscription", "s", "--data-dir", str(tmp_path))
            assert result[0] == 0, result[1]
            assert "2 dead letter(s) queued" in result[1]
            await wait_for(lambda: len(rx.ok()) == 2, what="the replays")
        ids = sorted(r.json["id"] for r in rx.ok())
    assert ids == sorted([first.id, second.id])  # two profiles: no order between them


async def test_a_4xx_answer_is_dead_lettered_at_once(tmp_path: Path) -> None:
    with Receiver(lambda r: 400) as rx:
        sub = {"name": "s", "shape": "event", "destination": webhook(rx.url),
               "retry": FAST_RETRY}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"email": "a@example.com"}, "t.one")
            await wait_for(lambda: len(rx.all()) == 1)
            for _ in range(200):
                if await h.runtime.bus.dead_letters("sub:s"):
                    break
                await asyncio.sleep(0.01)
            letters = await h.runtime.bus.dead_letters("sub:s")
    assert len(letters) == 1 and "HTTP 400" in letters[0].error
    assert len(rx.all()) == 1


async def test_down_then_recovers_gets_every_event_once_in_order_per_profile(
        tmp_path: Path) -> None:
    """The 10-minute outage, with the schedule shortened to 1.5 s."""
    outage_ends = time.time() + 1.5

    def respond(r: Received) -> int:
        return 500 if time.time() < outage_ends else 200

    people = [f"p{i}@example.com" for i in range(10)]
    with Receiver(respond) as rx:
        sub = {"name": "s", "shape": "event", "destination": webhook(rx.url),
               "retry": {"initial_backoff": 0.05, "max_backoff": 0.3, "max_attempts": 1000,
                         "jitter": 0.5}}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            sent = []
            for n in range(20):
                for email in people:
                    sent.append(await h.send({"email": email, "n": n}, "t.step"))
            await wait_for(lambda: len(rx.ok()) >= len(sent), timeout=20,
                           what="every event after recovery")
            await asyncio.sleep(0.3)
        ok = rx.ok()
    assert min(r.at for r in ok) >= outage_ends - 0.05
    ids = [r.headers["webhook-id"] for r in ok]
    assert len(ids) == len(set(ids)) == len(sent)  # once per id
    by_person: dict[str, list[int]] = {}
    for r in ok:
        by_person.setdefault(r.json["data"]["email"], []).append(r.json["data"]["n"])
    assert by_person == {p: list(range(20)) for p in people}  # in order per profile
    assert any(r.status == 500 for r in rx.all())


async def test_order_per_profile_with_random_failures(tmp_path: Path) -> None:
    import random

    rng = random.Random(3)
    lock = threading.Lock()

    def respond(r: Received) -> int:
        with lock:
            return 500 if rng.random() < 0.3 else 200

    with Receiver(respond) as rx:
        sub = {"name": "s", "shape": "event", "destination": webhook(rx.url, max_concurrency=8),
               "retry": FAST_RETRY}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            for n in range(30):
                await h.publish(*[h.event({"email": f"q{i}@example.com", "n": n}, "t.step")
                                  for i in range(5)])
            await wait_for(lambda: len(rx.ok()) >= 150, timeout=20, what="all deliveries")
        ok = rx.ok()
    by_person: dict[str, list[int]] = {}
    for r in ok:
        by_person.setdefault(r.json["data"]["email"], []).append(r.json["data"]["n"])
    assert all(seq == list(range(30)) for seq in by_person.values()), by_person
    assert len(by_person) == 5


async def test_a_down_destination_does_not_block_another_subscription(tmp_path: Path) -> None:
    with Receiver(lambda r: 503) as down, Receiver() as up:
        subs = [
            {"name": "down", "shape": "event", "destination": webhook(down.url),
             "retry": {"initial_backoff": 5, "max_attempts": 100}},
            {"name": "up", "shape": "event", "destination": webhook(up.url)},
        ]
        async with running(config_with(subscriptions=subs), tmp_path) as h:
            for n in range(50):
                await h.send({"email": f"x{n}@example.com"}, "t.step")
            await wait_for(lambda: len(up.ok()) == 50, what="the healthy subscription")
            # ingest is not blocked either: the profiles processor keeps up
            await wait_for(lambda: h.runtime.store.counts()["events_applied"] == 50)
        assert len(down.all()) >= 1
        assert not down.ok()


async def test_pause_holds_deliveries_and_resume_sends_them_in_order(tmp_path: Path) -> None:
    with Receiver() as rx:
        sub = {"name": "s", "shape": "event", "destination": webhook(rx.url)}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"email": "a@example.com", "n": 0}, "t.step")
            await wait_for(lambda: len(rx.ok()) == 1)
            result = await cli("subscriptions", "pause", "s", "--data-dir", str(tmp_path))
            assert result[0] == 0, result[1]
            await wait_for(lambda: h.activation.running["s"].runner.paused, what="the pause")
            for n in range(1, 4):
                await h.send({"email": "a@example.com", "n": n}, "t.step")
            await asyncio.sleep(0.5)
            assert len(rx.ok()) == 1
            listing = await cli("deliveries", "list", "--json", "--data-dir", str(tmp_path))
            row = orjson.loads(listing[1])[0]
            assert row["paused"] is True and row["stats"]["lag"] == 3
            result = await cli("subscriptions", "resume", "s", "--data-dir", str(tmp_path))
            assert result[0] == 0, result[1]
            await wait_for(lambda: len(rx.ok()) == 4, what="the held deliveries")
        assert [r.json["data"]["n"] for r in rx.ok()] == [0, 1, 2, 3]


async def test_timeout_counts_as_a_failed_attempt(tmp_path: Path) -> None:
    with Receiver(delay=0.5) as rx:
        sub = {"name": "s", "shape": "event",
               "destination": webhook(rx.url, timeout="100ms"),
               "retry": {"initial_backoff": 0.01, "max_attempts": 2}}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"email": "a@example.com"}, "t.step")
            for _ in range(300):
                if await h.runtime.bus.dead_letters("sub:s"):
                    break
                await asyncio.sleep(0.01)
            letters = await h.runtime.bus.dead_letters("sub:s")
    assert len(letters) == 1 and "timeout" in letters[0].error


async def test_rate_limit_spaces_attempts(tmp_path: Path) -> None:
    with Receiver() as rx:
        sub = {"name": "s", "shape": "notification",
               "destination": webhook(rx.url, rate_per_second=20.0)}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.publish(*[h.event({"email": f"r{n}@example.com"}, "t.step")
                              for n in range(30)])
            await wait_for(lambda: len(rx.ok()) == 30)
        times = sorted(r.at for r in rx.ok())
    # a bucket of 20 starts full, so the last 10 need about half a second
    assert times[-1] - times[0] >= 0.4
    assert rx.ok()[0].json["data"]["uid"]
