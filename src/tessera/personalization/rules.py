"""Evaluating audience and eligibility rules against one profile.

A rule sees a :class:`Facts` of the profile: its traits, its computed traits
(implicit event-history traits included), its identifiers, its consents and
the audiences it is in. Path leaves are evaluated by the condition language of
subscriptions (:func:`tessera.activation.expr.holds`), so the operators behave
the same everywhere. Audiences may refer to other audiences; they are
evaluated in dependency order (:func:`audience_order`), a cycle is refused
when the configuration is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from tessera.activation.expr import holds
from tessera.personalization.model import AudienceConfig, EventHistory, Rule


@dataclass(slots=True)
class Facts:
    """What a rule can see of one profile."""

    profile_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    computed: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    audiences: set[str] = field(default_factory=set)
    consent: Callable[[str], bool] = lambda purpose: False

    def context(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "traits": self.traits,
            "computed": self.computed,
            "identifiers": self.identifiers,
            "audiences": sorted(self.audiences),
        }


def _history_holds(history: EventHistory, facts: Facts) -> bool:
    count = facts.computed.get(history.trait().name, 0) or 0
    if count < history.min:
        return False
    return history.max is None or count <= history.max


def evaluate(rule: Rule, facts: Facts, ctx: dict[str, Any] | None = None) -> bool:
    """Whether ``rule`` holds for the profile described by ``facts``."""
    if ctx is None:
        ctx = facts.context()
    if rule.all_ is not None:
        return all(evaluate(r, facts, ctx) for r in rule.all_)
    if rule.any_ is not None:
        return any(evaluate(r, facts, ctx) for r in rule.any_)
    if rule.not_ is not None:
        return not evaluate(rule.not_, facts, ctx)
    if rule.audience is not None:
        return rule.audience in facts.audiences
    if rule.consent is not None:
        return bool(facts.consent(rule.consent))
    if rule.event is not None:
        return _history_holds(rule.event, facts)
    assert rule.condition is not None
    return holds(rule.condition, ctx)


def describe(rule: Rule) -> str:
    """A short human-readable form of a rule, for the reasons of a decision."""
    if rule.all_ is not None:
        return "(" + " and ".join(describe(r) for r in rule.all_) + ")"
    if rule.any_ is not None:
        return "(" + " or ".join(describe(r) for r in rule.any_) + ")"
    if rule.not_ is not None:
        return "not " + describe(rule.not_)
    if rule.audience is not None:
        return f"in audience {rule.audience}"
    if rule.consent is not None:
        return f"consent to {rule.consent}"
    if rule.event is not None:
        h = rule.event
        times = f"at least {h.min}" + (f" and at most {h.max}" if h.max is not None else "")
        within = f" in the last {_duration(h.within)}" if h.within else " ever"
        return f"{h.type} {times} times{within}"
    assert rule.condition is not None
    ops = ", ".join(f"{op} {value!r}" for op, value in rule.condition.operators())
    return f"{rule.path} {ops}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def audience_order(audiences: Sequence[AudienceConfig]) -> list[AudienceConfig]:
    """Audiences sorted so that each comes after the audiences its rule refers to."""
    by_name = {a.name: a for a in audiences}
    graph = {a.name: {n for n in a.rule.audiences() if n in by_name} for a in audiences}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1]) if len(exc.args) > 1 else "?"
        raise ValueError(f"audiences refer to each other in a cycle: {cycle}") from None
    return [by_name[n] for n in order]


def memberships(audiences: Sequence[AudienceConfig], facts: Facts) -> set[str]:
    """Every audience (of ``audiences``, in dependency order) the profile belongs to.

    ``facts.audiences`` is filled in as it goes, so later audiences see the earlier
    ones; it holds the result at the end.
    """
    facts.audiences = set()
    ctx = facts.context()
    for audience in audiences:
        if evaluate(audience.rule, facts, ctx):
            facts.audiences.add(audience.name)
            ctx["audiences"] = sorted(facts.audiences)
    return facts.audiences
