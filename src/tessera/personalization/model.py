"""Personalization as configuration: computed traits, audiences and the actions catalog.

These models are read from the ``personalization:`` section of ``tessera.yaml``
(and the rule of a preview request), so a typo stops the process with its
dotted path. Like :mod:`tessera.activation.model` they import nothing from the
rest of Tessera but the activation models, so :mod:`tessera.config` can import
them.

The rule language of audiences and action eligibility is the condition
language of subscriptions and journeys (``path`` + operators, ``all`` /
``any`` / ``not``), extended with three leaves that need more than a path:
``event`` (event history in a window), ``audience`` (membership of another
audience) and ``consent`` (a purpose the profile consented to).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import Field, PrivateAttr, field_validator, model_validator

from tessera.activation.model import NAME_PATTERN, Condition, Duration, Filter, Model

Function = Literal["count", "sum", "min", "max", "avg", "first", "last", "distinct_count",
                   "most_frequent"]
NEEDS_VALUE: frozenset[str] = frozenset(
    {"sum", "min", "max", "avg", "first", "last", "distinct_count", "most_frequent"})
TRAIT_NAME = r"^[a-z][a-z0-9_]{0,63}$"
Outcome = Literal["accepted", "declined"]


def _accepted() -> list[Outcome]:
    return ["accepted"]


def default_granularity(window: float) -> float:
    """Bucket width of a window: a hundredth of it, at least one second, at most an hour.

    An event then counts for at least ``window`` and at most ``window + granularity``
    (it leaves with its whole bucket), and a profile keeps at most about 100 buckets
    per trait whatever the event rate.
    """
    return min(max(window / 100.0, 1.0), 3600.0)


class ComputedTraitConfig(Model):
    """A trait computed from behaviour: ``function`` over the events matching ``filter``.

    ``value`` is the path of the value aggregated (``data.total``); ``count`` needs
    none. With a ``window`` only events of the last ``window`` count, and the trait
    changes as they age out; without one it covers the whole history.
    """

    name: str = Field(pattern=TRAIT_NAME)
    function: Function
    filter: Filter = Field(default_factory=Filter)
    value: str | None = None
    window: Duration | None = Field(default=None, gt=0)
    granularity: Duration | None = Field(default=None, gt=0)
    """Bucket width of the window (default: ``window / 100``, between 1 s and 1 h)."""

    @model_validator(mode="after")
    def _value_needed(self) -> ComputedTraitConfig:
        if self.function in NEEDS_VALUE and not self.value:
            raise ValueError(f"function {self.function!r} needs 'value': the path aggregated, "
                             "e.g. data.total")
        if self.granularity is not None and self.window is None:
            raise ValueError("'granularity' applies only with a 'window'")
        return self

    @property
    def bucket(self) -> float | None:
        if self.window is None:
            return None
        return self.granularity or default_granularity(self.window)


class EventHistory(Model):
    """"Did ``type`` at least ``min`` times in the last ``within``"."""

    type: str = Field(min_length=1)
    """Event type; ``*`` and ``?`` wildcards."""
    where: Condition | None = None
    """On the event (``data.resolution``), as in subscription filters."""
    within: Duration | None = Field(default=None, gt=0)
    """The window; none: ever."""
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=0)

    def trait(self) -> ComputedTraitConfig:
        """The implicit computed trait (a windowed count) that answers this condition."""
        key = orjson.dumps(self.model_dump(mode="json", by_alias=True, include={
            "type", "where", "within"}), option=orjson.OPT_SORT_KEYS)
        name = "event_" + hashlib.blake2b(key, digest_size=6).hexdigest()
        return ComputedTraitConfig(name=name, function="count", window=self.within,
                                   filter=Filter(types=[self.type], condition=self.where))


_OPERATORS = ("eq", "ne", "in_", "gt", "gte", "lt", "lte", "contains", "like", "exists")


class Rule(Model):
    """An audience or eligibility rule: a condition tree (see the module docstring).

    Paths: ``traits.<name>``, ``computed.<name>``, ``identifiers.<type>`` (a list),
    ``audiences`` (a list of names), ``profile_id``.
    """

    path: str | None = None
    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    gt: float | str | None = None
    gte: float | str | None = None
    lt: float | str | None = None
    lte: float | str | None = None
    contains: Any = None
    like: str | None = None
    exists: bool | None = None
    event: EventHistory | None = None
    audience: str | None = Field(default=None, pattern=NAME_PATTERN)
    consent: str | None = Field(default=None, min_length=1)
    all_: list[Rule] | None = Field(default=None, alias="all")
    any_: list[Rule] | None = Field(default=None, alias="any")
    not_: Rule | None = Field(default=None, alias="not")
    _condition: Condition | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        ops = [n for n in _OPERATORS if n in self.model_fields_set]
        if ops and self.path is None:
            raise ValueError(f"operators ({', '.join(o.rstrip('_') for o in ops)}) need a 'path'")
        kinds = [k for k in ("path", "event", "audience", "consent", "all_", "any_", "not_")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a rule is one of: a 'path' with operators, 'event', 'audience', "
                             "'consent', 'all', 'any' or 'not'"
                             + (f" (found {', '.join(k.rstrip('_') for k in kinds)})"
                                if kinds else ""))
        if self.path is not None:
            spec = {"path": self.path, **{n.rstrip("_"): getattr(self, n) for n in ops}}
            self._condition = Condition.model_validate(spec, strict=False)
        return self

    @property
    def condition(self) -> Condition | None:
        return self._condition

    def walk(self) -> list[Rule]:
        """This rule and every rule inside it."""
        out = [self]
        for child in [*(self.all_ or []), *(self.any_ or []), *([self.not_] if self.not_ else [])]:
            out += child.walk()
        return out

    def audiences(self) -> set[str]:
        return {r.audience for r in self.walk() if r.audience is not None}

    def histories(self) -> list[EventHistory]:
        return [r.event for r in self.walk() if r.event is not None]


class AudienceConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    rule: Rule


class Cap(Model):
    """At most ``max`` presentations in any ``per`` (a sliding window)."""

    max: int = Field(ge=1)
    per: Duration = Field(gt=0)


class Weight(Model):
    """Add ``add`` to the score when ``when`` holds."""

    when: Rule
    add: float
    reason: str | None = None


class ModelScoring(Model):
    """A scikit-learn pipeline trained offline, loaded at start.

    ``features`` are rule paths (``computed.roadside_tows_12m``, ``traits.age``)
    fed in this order; the score adds ``weight`` times the probability of the
    positive class (``predict_proba``), or the prediction for a regressor.
    """

    path: str = Field(min_length=1)
    """A joblib or pickle file: load only files you trust."""
    features: list[str] = Field(min_length=1)
    weight: float = 1.0


class ActionConfig(Model):
    """One entry of the actions catalog (an offer, a message, a task)."""

    name: str = Field(pattern=NAME_PATTERN)
    title: str = ""
    channels: list[str] = Field(min_length=1)
    eligibility: Rule | None = None
    requires_consent: list[str] = Field(default_factory=list)
    """Purposes; without each one's consent the action is suppressed."""
    priority: float = 0.0
    weights: list[Weight] = Field(default_factory=list)
    model: ModelScoring | None = None
    cooldown: Duration | None = None
    """After a presentation, not again for this long."""
    caps: list[Cap] = Field(default_factory=list)
    """Per profile, this action on any channel."""
    channel_caps: dict[str, list[Cap]] = Field(default_factory=dict)
    """Per profile and channel, this action."""
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    suppress_after: list[Outcome] = Field(default_factory=_accepted)
    """Outcomes after which the action is never offered to the profile again."""
    decline_cooldown: Duration | None = None
    """After a decline, not again for this long."""
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value

    @model_validator(mode="after")
    def _dates(self) -> ActionConfig:
        for stamp in (self.valid_from, self.valid_until):
            if stamp is not None and stamp.tzinfo is None:
                raise ValueError("valid_from / valid_until need a time zone (e.g. Z)")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        unknown = set(self.channel_caps) - set(self.channels)
        if unknown:
            raise ValueError(f"channel_caps names channels the action does not use: "
                             f"{', '.join(sorted(unknown))}")
        return self


class OutcomeTypes(Model):
    """Event types that report what happened to an offered action; ``*`` wildcards.

    Their ``data.action`` names the action and ``data.channel`` the channel.
    """

    presented: list[str] = Field(default_factory=lambda: ["offer.presented", "*.offer.presented"])
    accepted: list[str] = Field(default_factory=lambda: ["offer.accepted", "*.offer.accepted"])
    declined: list[str] = Field(default_factory=lambda: ["offer.declined", "*.offer.declined"])


class PersonalizationConfig(Model):
    computed_traits: list[ComputedTraitConfig] = Field(default_factory=list)
    audiences: list[AudienceConfig] = Field(default_factory=list)
    actions: list[ActionConfig] = Field(default_factory=list)
    channel_caps: dict[str, list[Cap]] = Field(default_factory=dict)
    """Per profile and channel, all actions together."""
    outcomes: OutcomeTypes = Field(default_factory=OutcomeTypes)
    consent_trait_prefix: str = "consent."
    """Consent to purpose P is the profile trait ``<prefix>P`` (true: granted)."""
    offer_history_days: int = Field(default=400, ge=1)
    """How long presentations and outcomes are kept for caps and cooldowns."""

    @model_validator(mode="after")
    def _consistent(self) -> PersonalizationConfig:
        names: set[str] = set()
        for trait in self.computed_traits:
            if trait.name in names:
                raise ValueError(f"computed trait {trait.name!r} is declared twice")
            names.add(trait.name)
        audiences = [a.name for a in self.audiences]
        if len(set(audiences)) != len(audiences):
            dup = next(a for a in audiences if audiences.count(a) > 1)
            raise ValueError(f"audience {dup!r} is declared twice")
        actions = [a.name for a in self.actions]
        if len(set(actions)) != len(actions):
            dup = next(a for a in actions if actions.count(a) > 1)
            raise ValueError(f"action {dup!r} is declared twice")
        rules = [(f"audience {a.name!r}", a.rule) for a in self.audiences]
        for action in self.actions:
            if action.eligibility is not None:
                rules.append((f"action {action.name!r}", action.eligibility))
            rules += [(f"action {action.name!r} weight", w.when) for w in action.weights]
        for where, rule in rules:
            for name in rule.audiences():
                if name not in audiences:
                    raise ValueError(f"{where} refers to the audience {name!r}, which is not "
                                     f"declared under personalization.audiences")
            for path in (r.path for r in rule.walk() if r.path is not None):
                head, _, rest = path.partition(".")
                if head == "computed" and rest not in names:
                    raise ValueError(f"{where} refers to {path!r}, but no computed trait "
                                     f"{rest!r} is declared")
        from tessera.personalization.rules import audience_order

        audience_order(self.audiences)  # raises on a cycle
        return self

    def all_computed(self) -> list[ComputedTraitConfig]:
        """Declared computed traits and the implicit ones of ``event`` conditions."""
        out = {t.name: t for t in self.computed_traits}
        for rule in self.all_rules():
            for history in rule.histories():
                trait = history.trait()
                out.setdefault(trait.name, trait)
        return list(out.values())

    def all_rules(self) -> list[Rule]:
        rules = [a.rule for a in self.audiences]
        for action in self.actions:
            if action.eligibility is not None:
                rules.append(action.eligibility)
            rules += [w.when for w in action.weights]
        return rules

    @property
    def enabled(self) -> bool:
        return bool(self.computed_traits or self.audiences or self.actions)
