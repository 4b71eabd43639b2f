"""A subscriber asks for fat delivery of a notification event: the entity is fetched
from its owning service through the catalog's resolver (claim check)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.activation.helpers import config_with, running, wait_for, webhook
from tests.activation.receiver import Receiver
from tests.catalog.conftest import catalog_section
from tests.catalog.test_resolver import NOTIFY, Owner


def _config(owner_url: str, receiver_url: str) -> Any:
    section = catalog_section()
    section["events"].append({
        "type": NOTIFY, "domain": "membership", "kind": "entity_change", "entity": "member",
        "delivery": "notification",
        "resolver": {"url": owner_url + "/members/{id}?version={version}",
                     "timeout_seconds": 0.5, "retries": 1, "backoff_seconds": 0.01,
                     "cache_seconds": 30},
    })
    sub = {"name": "fat-sync", "filter": {"types": [NOTIFY]}, "shape": "fat",
           "destination": webhook(receiver_url)}
    return config_with(catalog=section, subscriptions=[sub])


async def test_fat_subscription_gets_the_entity_of_a_notification(tmp_path: Path) -> None:
    owner = Owner()
    try:
        with Receiver() as rx:
            async with running(_config(owner.url, rx.url), tmp_path) as h:
                await h.send({"op": "u", "entity": "member", "id": "M-1", "version": 3,
                              "member_number": "M-1"}, NOTIFY, source="membership")
                await wait_for(lambda: len(rx.ok()) == 1, what="the fat delivery")
            body = rx.ok()[0].json
        event = body["data"]["event"]
        assert event["after"] == {"member_number": "M-1", "city": "Bergen"}
        assert event["resolved"] is True and event["id"] == "M-1"
        assert owner.requests == ["/members/M-1?version=3"]
    finally:
        owner.close()


async def test_unresolvable_notification_is_dead_lettered_with_the_reason(
        tmp_path: Path) -> None:
    owner = Owner()
    owner.fail_next = 100  # the owning service answers 503 to every try
    try:
        with Receiver() as rx:
            async with running(_config(owner.url, rx.url), tmp_path) as h:
                await h.send({"op": "u", "entity": "member", "id": "M-1", "version": 4,
                              "member_number": "M-1"}, NOTIFY, source="membership")

                async def letters() -> list[Any]:
                    return await h.runtime.bus.dead_letters("sub:fat-sync")

                found: list[Any] = []
                for _ in range(300):
                    found = await letters()
                    if found:
                        break
                    await asyncio.sleep(0.05)
            assert rx.ok() == []
        assert len(found) == 1
        assert found[0].error.startswith("claim check failed")
    finally:
        owner.close()
