"""What the Customer 360 shows from personalization and consent.

Segments, computed traits and next best actions come from
:class:`tessera.personalization.queries.Personalization` (what
``/v1/profiles/{id}/segments`` and ``/next-best-action`` answer); asking for
a decision here records nothing, so opening a profile never counts as an
offer. Consent is the ``consent.<purpose>`` traits read by
:func:`tessera.privacy.consent.has_consent`, shown with the source and time
of the decision that survived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera.personalization.api import personalization
from tessera.privacy.consent import PREFIX, PURPOSES, has_consent, trait_name
from tessera.runtime import Runtime
from tessera.store.base import Profile, Trait

NBA_PER_CHANNEL = 3


@dataclass(slots=True)
class Personalized:
    configured: bool
    segments: list[dict[str, Any]] = field(default_factory=list)
    computed: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """Per channel: ``{"channel", "chosen": [...], "rejected": [...]}``."""
    error: str = ""


@dataclass(slots=True)
class ConsentRow:
    purpose: str
    granted: bool
    trait: Trait | None
    """The surviving decision (source, time, event), or None: no decision, no consent."""


def personalized(runtime: Runtime, pid: str) -> Personalized:
    """Segments, computed traits and ranked actions per channel of one profile (blocking)."""
    config = runtime.config.personalization
    if not (config.audiences or config.actions or config.computed_traits):
        return Personalized(configured=False)
    try:
        p = personalization(runtime)
        out = Personalized(configured=True, segments=p.segments_of(pid),
                           computed=p.computed_of(pid))
        channels = dict.fromkeys(c for a in config.actions for c in a.channels)
        for channel in channels:
            decision = p.decide(pid, channel, NBA_PER_CHANNEL)
            out.decisions.append({
                "channel": channel,
                "chosen": [c.as_dict(i + 1) for i, c in enumerate(decision.chosen)],
                "rejected": [r.as_dict() for r in decision.rejected],
            })
        return out
    except Exception as exc:  # its state unreadable: say so, keep the rest of the page
        return Personalized(configured=True, error=f"{type(exc).__name__}: {exc}")


def consent(profile: Profile) -> list[ConsentRow]:
    """Every known purpose, and any other recorded one, with the decision that holds."""
    purposes = list(PURPOSES) + sorted(
        name.removeprefix(PREFIX) for name in profile.traits
        if name.startswith(PREFIX) and name.removeprefix(PREFIX) not in PURPOSES)
    return [ConsentRow(purpose, has_consent(profile.traits, purpose),
                       profile.traits.get(trait_name(purpose))) for purpose in purposes]
