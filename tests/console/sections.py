"""The scenario of the console's activation, catalog and review pages.

On top of ``scenario.py`` (Jane's merge, Bob, two dead letters):

- a subscription ``crm-hook`` delivers CRM events to a webhook that answers
  503 until told otherwise, with one attempt each: both CRM contacts end up
  as its dead letters; a second one, ``everything``, writes every event to a
  file and stays healthy;
- a journey ``welcome`` entered by web sign-ups with a plan: Dan signs up and
  waits for his first app login; Eve signs up and logs in, which completes it;
- the store's ``com.example.store.order.placed`` has a schema and the store's
  events are quarantined when they break it: one order with a text amount is;
- a second Bob (Bob Smith, signed up on the web) shares no identifier with
  the CRM's Bob Smith: the pair waits in the identity review queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.config import default_config
from tessera.identity.review import ReviewStore

HOOK = "crm-hook"
FILE_SUB = "everything"
JOURNEY = "welcome"
ORDER_TYPE = "com.example.store.order.placed"
QUARANTINED_ID = "order-1"
REVIEW_SCORE = 0.9312

EXTRA_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("wk_crm_123", {
        "id": "crm-3", "source": "crm", "type": "com.example.crm.contact.updated",
        "time": "2026-03-01T09:40:00Z",
        "data": {"member_number": "M-2002", "last_name": "Smith"}}),
    ("wk_web_123", {
        "id": "web-dan", "source": "web", "type": "com.example.web.signup",
        "time": "2026-03-07T10:00:00Z",
        "data": {"userId": "u-dan", "email": "dan@example.com", "first_name": "Dan",
                 "plan": "basic"}}),
    ("wk_web_123", {
        "id": "web-eve", "source": "web", "type": "com.example.web.signup",
        "time": "2026-03-07T11:00:00Z",
        "data": {"userId": "u-eve", "email": "eve@example.com", "first_name": "Eve",
                 "plan": "basic"}}),
    ("wk_app_123", {
        "id": "app-eve", "source": "app", "type": "com.example.app.login",
        "time": "2026-03-07T11:05:00Z", "data": {"userId": "u-eve"}}),
    ("wk_web_123", {
        "id": "web-bob", "source": "web", "type": "com.example.web.signup",
        "time": "2026-03-08T09:00:00Z",
        "data": {"userId": "u-bob", "email": "bob.smith@home.example", "first_name": "Bob",
                 "last_name": "Smith"}}),
    ("wk_store_123", {
        "id": QUARANTINED_ID, "source": "store", "type": ORDER_TYPE,
        "time": "2026-03-08T12:00:00Z",
        "data": {"member_number": "M-2002", "amount": "12.50"}}),
]
"""Events sent after ``scenario.EVENTS``; the first gives the CRM's Bob his last name."""
CRM_EVENTS = 3
"""CRM events of both lists: what ``crm-hook`` fails to deliver."""
HOOK_DEAD_LETTERS = CRM_EVENTS + 1
"""``crm-hook`` reads from the beginning, so the undecodable message of ``scenario.py`` is
one of its dead letters too (replaying it fails again)."""

def raw_config(hook_url: str) -> dict[str, Any]:
    """The demo configuration plus the subscriptions, the journey and the catalog."""
    raw = default_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    for source in raw["sources"]:
        if source["name"] == "store":
            source["validation"] = "quarantine"
    raw["subscriptions"] = [
        {"name": HOOK, "filter": {"types": ["com.example.crm.*"]}, "start": "beginning",
         "destination": {"type": "webhook", "url": hook_url, "timeout": 2},
         "retry": {"max_attempts": 1}},
        {"name": FILE_SUB, "start": "beginning",
         "destination": {"type": "file", "path": "everything.jsonl"}},
    ]
    raw["journeys"] = [{
        "name": JOURNEY,
        "trigger": {"types": ["com.example.web.signup"],
                    "condition": {"path": "data.plan", "exists": True}},
        "steps": [
            {"id": "wait_login", "wait": {"until": {"types": ["com.example.app.login"]},
                                          "timeout": "7d"}},
            {"id": "greet", "action": {"emit": {"type": "com.example.journey.welcomed"}}},
        ],
    }]
    raw["catalog"] = {"validation": "allow", "events": [{
        "type": ORDER_TYPE, "description": "A customer placed an order in a store.",
        "domain": "retail", "source": "store", "kind": "process_step",
        "process": "ordering", "step": "placed",
        "versions": [{"version": 1, "schema": {
            "type": "object", "required": ["member_number", "amount"],
            "properties": {"member_number": {"type": "string"},
                           "amount": {"type": "number", "minimum": 0}}}}],
    }]}
    return raw


def queue_review_pair(data_dir: Path, a: str, b: str) -> None:
    """Put a candidate pair in the review queue, as a match run that scored it would."""
    store = ReviewStore.in_data_dir(data_dir)
    try:
        assert store.queue([(a, b, REVIEW_SCORE)]) == 1
    finally:
        store.close()
