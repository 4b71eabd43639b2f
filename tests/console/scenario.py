"""A small scenario for the console tests: two people, a merge and a dead letter.

Jane is first known to the CRM by member number and e-mail, then signs up on
the web with another e-mail (a second profile, keyed by user id), then logs in
to the app with her user id and member number: the app event ties the two
profiles together, so they merge into the one the member number points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.bus.base import Message
from tessera.events.envelope import Event, parse_time

POISON_ID = "poison-1"
MERGE_EVENT_TYPE = "com.example.app.login"

# (write key, CloudEvent)
EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("wk_crm_123", {
        "id": "crm-1", "source": "crm", "type": "com.example.crm.contact.updated",
        "time": "2026-03-01T09:00:00Z",
        "data": {"member_number": "M-1001", "email": "jane@example.com",
                 "first_name": "Jane", "last_name": "Doe"}}),
    ("wk_web_123", {
        "id": "web-1", "source": "web", "type": "com.example.web.signup",
        "time": "2026-03-02T10:00:00Z",
        "data": {"userId": "u-42", "email": "jane.doe@work.example",
                 "preferred_channel": "email"}}),
    ("wk_app_123", {
        "id": "app-1", "source": "app", "type": MERGE_EVENT_TYPE,
        "time": "2026-03-03T11:00:00Z",
        "data": {"userId": "u-42", "member_number": "M-1001"}}),
    ("wk_membership_123", {
        "id": "mem-1", "source": "membership", "type": "com.example.membership.renewed",
        "time": "2026-03-04T12:00:00Z",
        "data": {"member_number": "M-1001", "tier": "gold", "address": "1 Main St, Springfield"}}),
    ("wk_crm_123", {
        "id": "crm-2", "source": "crm", "type": "com.example.crm.contact.updated",
        "time": "2026-03-01T09:30:00Z",
        "data": {"member_number": "M-2002", "email": "bob@example.com", "first_name": "Bob"}}),
]


def cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", **event}


FAILED_ERROR = "simulated: the store was unavailable"
FAILED_EVENT = Event(
    id="store-9", source="store", type="com.example.store.purchase",
    time=parse_time("2026-03-05T15:00:00Z"), received_at=parse_time("2026-03-05T15:00:01Z"),
    source_name="store",
    data={"member_number": "M-3003", "email": "carol@example.com", "first_name": "Carol"},
    identifiers=[("member_number", "M-3003"), ("email", "carol@example.com")],
)


async def put_dead_letters(bus: Any) -> None:
    """Two dead letters, on an empty bus: a valid event that failed (replaying it works)
    and a message no processor can decode (replaying it fails again)."""
    event = FAILED_EVENT
    await bus.publish("events", [Message(event.uid, event.partition_key, event.to_json())])
    [delivery] = await bus.fetch("events", "profiles", 1, 1.0)
    assert delivery.id == event.uid
    await bus.dead_letter(delivery, FAILED_ERROR)
    await bus.publish("events", [Message(POISON_ID, "poison", b"\xff this is not an event")])


async def put_dead_letters_in(data_dir: Path) -> None:
    """The same, straight into the embedded bus of a data dir (before the server starts)."""
    from tessera.bus import open_bus

    data_dir.mkdir(parents=True, exist_ok=True)
    bus = open_bus(None, data_dir)
    await bus.start()
    try:
        await put_dead_letters(bus)
    finally:
        await bus.close()
