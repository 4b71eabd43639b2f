"""Next best action: eligible, then capped, then scored, then the top N, each with reasons.

A decision reads one profile's facts (traits, computed traits, identifiers,
consent, audiences) and its offer history, and goes through the actions
catalog in four stages. Every action that drops out says at which stage and
why; every action chosen says why it was eligible, which caps it was within
and how its score was made. Nothing here touches HTTP or a database: the API
gathers the facts and the history and calls :meth:`DecisionEngine.decide`.

Outcomes (``offer.presented`` / ``accepted`` / ``declined`` events) reach the
offer history through the personalization processor, so they count against
caps and cooldowns as soon as it has handled them.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.activation.expr import lookup
from tessera.events.envelope import iso_time
from tessera.personalization.model import ActionConfig, Cap, ModelScoring, PersonalizationConfig
from tessera.personalization.rules import Facts, describe, evaluate
from tessera.personalization.state.base import OfferRecord


@dataclass(slots=True)
class Choice:
    action: str
    title: str
    channel: str
    score: float
    priority: float
    reasons: list[str]
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, rank: int) -> dict[str, Any]:
        return {"rank": rank, "action": self.action, "title": self.title,
                "channel": self.channel, "score": round(self.score, 6),
                "priority": self.priority, "reasons": self.reasons, "payload": self.payload}


@dataclass(slots=True)
class Rejection:
    action: str
    stage: str
    """``channel``, ``validity``, ``consent``, ``suppressed``, ``eligibility`` or ``cap``."""
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "stage": self.stage, "reason": self.reason}


@dataclass(slots=True)
class Decision:
    chosen: list[Choice]
    rejected: list[Rejection]
    ranked_out: list[str]
    """Eligible and within caps, but below the top N."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Scorer:
    """A scikit-learn pipeline (any object with ``predict_proba`` or ``predict``)."""

    def __init__(self, spec: ModelScoring, estimator: Any) -> None:
        self.spec = spec
        self.estimator = estimator

    @classmethod
    def load(cls, spec: ModelScoring, base: Path | None = None) -> Scorer:
        path = Path(spec.path)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            import joblib

            estimator = joblib.load(path)
        except ImportError:  # joblib comes with scikit-learn; a plain pickle works too
            with open(path, "rb") as f:
                estimator = pickle.load(f)  # a file the operator configured and trusts
        return cls(spec, estimator)

    def features(self, ctx: dict[str, Any]) -> list[float]:
        row = []
        for path in self.spec.features:
            value = lookup(ctx, path)
            if isinstance(value, int | float):  # bool included: true is 1.0
                row.append(float(value))
            else:
                row.append(math.nan)
        return row

    def score(self, ctx: dict[str, Any]) -> float:
        row = [self.features(ctx)]
        if hasattr(self.estimator, "predict_proba"):
            return float(self.estimator.predict_proba(row)[0][-1])
        return float(self.estimator.predict(row)[0])


class DecisionEngine:
    def __init__(self, config: PersonalizationConfig,
                 scorers: dict[str, Scorer] | None = None) -> None:
        self.config = config
        self.actions = list(config.actions)
        self.scorers = scorers or {}

    @classmethod
    def load(cls, config: PersonalizationConfig, base: Path | None = None) -> DecisionEngine:
        """With every action's model loaded (at start, not per request)."""
        scorers = {a.name: Scorer.load(a.model, base) for a in config.actions
                   if a.model is not None}
        return cls(config, scorers)

    def decide(self, facts: Facts, offers: Sequence[OfferRecord], channel: str, limit: int,
               now: float) -> Decision:
        ctx = facts.context()
        rejected: list[Rejection] = []
        candidates: list[Choice] = []
        for action in self.actions:
            reasons: list[str] = []
            rejection = (self._eligible(action, facts, ctx, channel, now, reasons)
                         or self.within_caps(action, offers, channel, now, reasons))
            if rejection is not None:
                rejected.append(Rejection(action.name, *rejection))
                continue
            score = self._score(action, facts, ctx, reasons)
            candidates.append(Choice(action.name, action.title or action.name, channel, score,
                                     action.priority, reasons, dict(action.payload)))
        candidates.sort(key=lambda c: (-c.score, -c.priority, c.action))
        return Decision(candidates[:limit], rejected, [c.action for c in candidates[limit:]])

    # -- stage 1: eligibility ------------------------------------------------------------

    def _eligible(self, action: ActionConfig, facts: Facts, ctx: dict[str, Any], channel: str,
                  now: float, reasons: list[str]) -> tuple[str, str] | None:
        if channel not in action.channels:
            return "channel", f"not offered on {channel} (only {', '.join(action.channels)})"
        if action.valid_from is not None and now < action.valid_from.timestamp():
            return "validity", f"valid from {iso_time(action.valid_from.timestamp())}"
        if action.valid_until is not None and now >= action.valid_until.timestamp():
            return "validity", f"expired at {iso_time(action.valid_until.timestamp())}"
        for purpose in action.requires_consent:
            if not facts.consent(purpose):
                return "consent", f"no consent to {purpose}"
            reasons.append(f"consent to {purpose} granted")
        if action.eligibility is not None:
            if not evaluate(action.eligibility, facts, ctx):
                return "eligibility", f"rule not met: {describe(action.eligibility)}"
            reasons.append(f"eligible: {describe(action.eligibility)}")
        return None

    @staticmethod
    def _offers_of(action: ActionConfig, offers: Sequence[OfferRecord]) -> list[OfferRecord]:
        return [o for o in offers if o.action == action.name]

    # -- stage 2: caps ----------------------------------------------------------------------

    def within_caps(self, action: ActionConfig, offers: Sequence[OfferRecord], channel: str,
                    now: float, reasons: list[str]) -> tuple[str, str] | None:
        """None if the offer history leaves the action available on the channel (the caps
        it is within go to ``reasons``); else (stage, reason): ``suppressed`` or ``cap``."""
        mine = self._offers_of(action, offers)
        for outcome in action.suppress_after:
            done = [o for o in mine if o.outcome == outcome]
            if done:
                return "suppressed", f"{outcome} on {iso_time(done[-1].at)}"
        shown = [o for o in mine if o.outcome == "presented"]
        if action.cooldown is not None and shown and now - shown[-1].at < action.cooldown:
            return "cap", (f"cooldown: presented {iso_time(shown[-1].at)}, not again within "
                           f"{_span(action.cooldown)}")
        declined = [o for o in mine if o.outcome == "declined"]
        if (action.decline_cooldown is not None and declined
                and now - declined[-1].at < action.decline_cooldown):
            return "cap", (f"declined {iso_time(declined[-1].at)}, not again within "
                           f"{_span(action.decline_cooldown)}")
        checks: list[tuple[str, Cap, list[OfferRecord]]] = [
            ("this action", cap, shown) for cap in action.caps]
        checks += [(f"this action on {channel}", cap, [o for o in shown if o.channel == channel])
                   for cap in action.channel_caps.get(channel, [])]
        on_channel = [o for o in offers if o.outcome == "presented" and o.channel == channel]
        checks += [(f"all actions on {channel}", cap, on_channel)
                   for cap in self.config.channel_caps.get(channel, [])]
        for what, cap, records in checks:
            n = sum(1 for o in records if now - o.at < cap.per)
            if n >= cap.max:
                return "cap", (f"frequency cap: {what} presented {_plural(n, 'time')} in "
                               f"{_span(cap.per)} (at most {cap.max})")
            reasons.append(f"within cap: {what} presented {_plural(n, 'time')} in "
                           f"{_span(cap.per)} (at most {cap.max})")
        return None

    # -- stage 3: scoring ------------------------------------------------------------------

    def _score(self, action: ActionConfig, facts: Facts, ctx: dict[str, Any],
               reasons: list[str]) -> float:
        score = action.priority
        reasons.append(f"priority {action.priority:g}")
        for weight in action.weights:
            if evaluate(weight.when, facts, ctx):
                score += weight.add
                why = weight.reason or describe(weight.when)
                reasons.append(f"{weight.add:+g}: {why}")
        scorer = self.scorers.get(action.name)
        if scorer is not None:
            p = scorer.score(ctx)
            score += scorer.spec.weight * p
            reasons.append(f"{scorer.spec.weight * p:+.3f}: model {Path(scorer.spec.path).name} "
                           f"predicts {p:.3f}")
        return score
