"""Replaying every pending dead letter of one subscription (after its destination is fixed).

The bus keeps dead letters per consumer group, and a subscription's group is
``sub:<name>``; this is the one place that turns "replay this subscription"
into replays of its letters, so the console and the command line do the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.activation.delivery import group_name
from tessera.bus.base import Bus


@dataclass(slots=True)
class Replayed:
    replayed: list[int] = field(default_factory=list)
    """Dead letter ids queued again for the subscription."""
    missing: list[int] = field(default_factory=list)
    """Ids that another request replayed first (or that are gone)."""


async def replay_subscription(bus: Bus, subscription: str) -> Replayed:
    """Queue every pending dead letter of ``subscription`` for delivery again."""
    out = Replayed()
    for letter in await bus.dead_letters(group_name(subscription)):
        if await bus.replay_dead_letter(letter.id):
            out.replayed.append(letter.id)
        else:
            out.missing.append(letter.id)
    return out
