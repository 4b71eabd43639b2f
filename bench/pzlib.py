"""Members for the personalization benchmarks: consent, tier, tows, roadside calls, travel.

The events are the demo configuration's (the member-services company), so the
computed traits, audiences and actions of ``src/tessera/demo_config.yaml``
apply to them unchanged.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from tessera.events.envelope import iso_time

WRITE_KEYS = {"membership": "wk_membership_123", "crm": "wk_crm_123",
              "roadservice": "wk_roadservice_123", "travel": "wk_travel_123",
              "contact_center": "wk_contact_center_123"}
DECISIONS_KEY = "rk_personalize_123"
DAY = 86400.0


@dataclass(slots=True)
class Outgoing:
    source: str
    body: dict[str, Any]


def member_number(i: int) -> str:
    return f"B-{i:07d}"


def member_events(i: int, rng: random.Random, now: float | None = None) -> list[Outgoing]:
    """One member's history over the last year (times spread over it)."""
    now = time.time() if now is None else now
    number = member_number(i)
    out: list[Outgoing] = []

    def ce(source: str, what: str, data: dict[str, Any], days_ago: float) -> None:
        out.append(Outgoing(source, {
            "specversion": "1.0", "id": f"{number}-{len(out)}", "source": f"bench/{source}",
            "type": f"com.example.{source}.{what}", "time": iso_time(now - days_ago * DAY),
            "data": {"member_number": number, **data}}))

    ce("membership", "member.joined", {"tier": rng.choices(("classic", "plus", "premier"),
                                                           (6, 3, 1))[0]}, 300)
    ce("crm", "contact.updated", {"email": f"{number.lower()}@example.com",
                                  "consent": {"email": rng.random() < 0.8}}, 200)
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        days = rng.uniform(0, 360)
        ce("roadservice", "ticket.created", {"problem": "tow"}, days)
        ce("roadservice", "ticket.status_changed", {"resolution": "towed"}, days - 0.01)
    for _ in range(rng.choice((0, 1, 1, 2))):
        ce("travel", "booking.created", {"total": round(rng.uniform(200, 4000), 2),
                                         "destination": rng.choice(("Rome", "Oslo", "Lima"))},
           rng.uniform(0, 170))
    return out


def send_members(url: str, members: list[Outgoing], batch: int = 100) -> int:
    """POST the events as CloudEvents batches, one source's write key per batch."""
    import httpx

    by_source: dict[str, list[dict[str, Any]]] = {}
    for o in members:
        by_source.setdefault(o.source, []).append(o.body)
    sent = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for source, bodies in by_source.items():
            for i in range(0, len(bodies), batch):
                chunk = bodies[i:i + batch]
                response = client.post(
                    "/v1/events", json=chunk,
                    headers={"Authorization": f"Bearer {WRITE_KEYS[source]}",
                             "Content-Type": "application/cloudevents-batch+json"})
                response.raise_for_status()
                sent += len(chunk)
    return sent


def wait_caught_up(data_dir: Any, timeout: float) -> float:
    """Until the profiles and personalization groups have no lag; seconds waited."""
    from benchlib import bus_counts

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        lags = [bus_counts(data_dir, "events", g)[1] for g in ("profiles", "personalization")]
        if not any(lags):
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"the processors did not catch up in {timeout} s")
