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

# the condition language's own comparison and path walk, so operators mean the same here
from tessera.activation.expr import _MISSING, _compare, get
from tessera.personalization.model import AudienceConfig, Rule


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


Compiled = Callable[[Facts, dict[str, Any]], bool]
_CACHE: dict[int, tuple[Rule, Compiled]] = {}
_CACHE_LIMIT = 10_000


def _compile(rule: Rule) -> Compiled:
    """A rule as nested closures: its operators, paths and implicit trait names are looked
    up once here rather than on every evaluation (batch evaluation runs millions)."""
    if rule.all_ is not None:
        parts = [_compile(r) for r in rule.all_]
        return lambda f, c: all(p(f, c) for p in parts)
    if rule.any_ is not None:
        parts = [_compile(r) for r in rule.any_]
        return lambda f, c: any(p(f, c) for p in parts)
    if rule.not_ is not None:
        inner = _compile(rule.not_)
        return lambda f, c: not inner(f, c)
    if rule.audience is not None:
        audience = rule.audience
        return lambda f, c: audience in f.audiences
    if rule.consent is not None:
        purpose = rule.consent
        return lambda f, c: bool(f.consent(purpose))
    if rule.event is not None:
        name, low, high = rule.event.trait().name, rule.event.min, rule.event.max

        def history(f: Facts, c: dict[str, Any]) -> bool:
            count = f.computed.get(name, 0) or 0
            return bool(count >= low and (high is None or count <= high))

        return history
    condition = rule.condition
    assert condition is not None
    path = condition.path
    assert path is not None
    ops = condition.operators()
    find = _finder(path)
    if len(ops) == 1:
        op, expected = ops[0]
        return lambda f, c: _compare(op, find(c), expected)
    return lambda f, c: all(_compare(op, find(c), exp) for op, exp in ops)


def _finder(path: str) -> Callable[[dict[str, Any]], Any]:
    """``get(ctx, path)``, with the common two-part paths (``computed.x``, ``traits.y``)
    as two dictionary lookups instead of a split and a loop."""
    head, dot, rest = path.partition(".")
    if dot and "." not in rest:

        def two(ctx: dict[str, Any]) -> Any:
            node = ctx.get(head, _MISSING)
            if isinstance(node, dict):
                return node.get(rest, _MISSING)
            return get(ctx, path)  # a list index, or missing: the general walk decides

        return two
    return lambda ctx: get(ctx, path)


def compiled(rule: Rule) -> Compiled:
    """The compiled form of a rule, cached for as long as the rule object lives."""
    found = _CACHE.get(id(rule))
    if found is not None and found[0] is rule:
        return found[1]
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    fn = _compile(rule)
    _CACHE[id(rule)] = (rule, fn)
    return fn


def evaluate(rule: Rule, facts: Facts, ctx: dict[str, Any] | None = None) -> bool:
    """Whether ``rule`` holds for the profile described by ``facts``."""
    return compiled(rule)(facts, facts.context() if ctx is None else ctx)


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


def memberships(audiences: Sequence[AudienceConfig], facts: Facts,
                rules: Sequence[Compiled] | None = None) -> set[str]:
    """Every audience (of ``audiences``, in dependency order) the profile belongs to.

    ``facts.audiences`` is filled in as it goes, so later audiences see the earlier
    ones; it holds the result at the end. ``rules`` are the audiences' compiled rules
    when the caller keeps them (one cache lookup less per audience and profile).
    """
    facts.audiences = set()
    ctx = facts.context()
    entered: list[str] = ctx["audiences"]
    fns = rules if rules is not None else [compiled(a.rule) for a in audiences]
    for audience, fn in zip(audiences, fns, strict=True):
        if fn(facts, ctx):
            facts.audiences.add(audience.name)
            entered.append(audience.name)
    return facts.audiences
