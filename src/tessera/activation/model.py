"""Subscriptions and destinations as configuration: validated models, unknown fields refused.

These models are used by the configuration file (``subscriptions:``,
``destinations:``) and by the admin API (``POST /v1/subscriptions``), so both
accept exactly the same documents. They import nothing from the rest of
Tessera, so that :mod:`tessera.config` can import them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``1.5``, ``"500ms"``, ``"30s"``, ``"30m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (use e.g. '500ms', '30s', '30m', '2h')")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError("a duration is a number of seconds or a string like '30m'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class Condition(Model):
    """A predicate on a path of the event or the profile, or a combination of predicates.

    ``{path: data.status, eq: driver_assigned}``; several operators in one
    predicate must all hold. ``all`` / ``any`` / ``not`` combine conditions.
    Paths: ``type``, ``source``, ``subject``, any CloudEvents attribute,
    ``data.<...>``, ``profile.id``, ``profile.traits.<name>``,
    ``profile.identifiers.<type>`` (a list), ``journey.seen`` (in journeys).
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
    """A wildcard pattern (``*``, ``?``) the value (as text) must match."""
    exists: bool | None = None
    all_: list[Condition] | None = Field(default=None, alias="all")
    any_: list[Condition] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        combos = [c for c in (self.all_, self.any_, self.not_) if c is not None]
        if self.path is None and len(combos) != 1:
            raise ValueError("a condition needs a 'path' with operators, or one of all/any/not")
        if self.path is not None and combos:
            raise ValueError("a condition with a 'path' cannot also have all/any/not")
        if self.path is not None and not self.operators():
            raise ValueError(
                "a condition on a path needs an operator: eq, ne, in, gt, gte, lt, lte, "
                "contains, like or exists"
            )
        return self

    def operators(self) -> list[tuple[str, Any]]:
        names = ("eq", "ne", "in_", "gt", "gte", "lt", "lte", "contains", "like", "exists")
        return [(n.rstrip("_"), getattr(self, n)) for n in names if n in self.model_fields_set]

    def paths(self) -> list[str]:
        if self.path is not None:
            return [self.path]
        out: list[str] = []
        for child in [*(self.all_ or []), *(self.any_ or []), *([self.not_] if self.not_ else [])]:
            out += child.paths()
        return out


class Filter(Model):
    """Which events: every given part must match (an empty filter matches everything)."""

    types: list[str] = Field(default_factory=list)
    """Event types; ``*`` and ``?`` wildcards (``com.example.membership.*``)."""
    sources: list[str] = Field(default_factory=list)
    """The Tessera source name (``membership``) or the CloudEvents ``source``; wildcards."""
    attributes: dict[str, str | list[str]] = Field(default_factory=dict)
    """CloudEvents attributes (``subject``, extensions, ...) to values; wildcards."""
    condition: Condition | None = None
    """On ``data.*``, the attributes, or ``profile.*`` (the profile after the event)."""

    def needs_profile(self) -> bool:
        return self.condition is not None and any(
            p.split(".", 1)[0] == "profile" for p in self.condition.paths()
        )


class Shape(Model):
    """A projection (``fields``: output name to path) or a ``template`` (values with
    ``{{ path }}`` placeholders), delivered as the CloudEvent's ``data``."""

    fields: dict[str, str] | None = None
    template: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Shape:
        if (self.fields is None) == (self.template is None):
            raise ValueError("a shape has either 'fields' or 'template'")
        return self


ShapeSpec = Literal["fat", "notification", "event"] | Shape


class RetryPolicy(Model):
    """Exponential backoff with jitter, within a budget of attempts and time."""

    max_attempts: int = Field(default=25, ge=1)
    initial_backoff: Duration = 1.0
    max_backoff: Duration = 600.0
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    """Each wait is drawn uniformly from [wait * (1 - jitter), wait]."""
    max_elapsed: Duration = 86400.0
    """Give up (dead letter) when the next attempt would start later than this after the first."""


class Limits(Model):
    max_concurrency: int = Field(default=16, ge=1, le=1000)
    """Requests in flight at once to this destination."""
    rate_per_second: float | None = Field(default=None, gt=0)
    """At most this many attempts a second (a token bucket); none means unlimited."""


class WebhookDestination(Limits):
    type: Literal["webhook"]
    url: str
    secret: str | None = None
    """Standard Webhooks secret (``whsec_`` + base64); the requests are signed with it."""
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.match(r"^https?://[^\s/]+", url):
            raise ValueError("must be an http:// or https:// URL")
        return url


class PythonDestination(Limits):
    type: Literal["python"]
    entry_point: str | None = None
    """The name of a function registered in the entry-point group ``tessera.destinations``."""
    function: str | None = None
    """Or ``package.module:function``."""
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> PythonDestination:
        if (self.entry_point is None) == (self.function is None):
            raise ValueError("a python destination has either 'entry_point' or 'function'")
        return self


class FileDestination(Limits):
    type: Literal["file"]
    path: str
    """A file (JSONL) or a directory (Parquet); relative paths are in the data directory."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    flush_seconds: Duration = 1.0
    """Parquet: how long rows may wait to be written as one file."""


Destination = Annotated[
    WebhookDestination | PythonDestination | FileDestination, Field(discriminator="type")
]


Topic = Literal["events", "derived"]
Purpose = Literal["marketing_email", "marketing_sms", "personalization", "analytics"]
"""The consent purposes (:data:`tessera.privacy.consent.PURPOSES`)."""


def _all_topics() -> list[Topic]:
    return ["events", "derived"]


class SubscriptionConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    filter: Filter = Field(default_factory=Filter)
    shape: ShapeSpec = "fat"
    destination: Destination | str
    """A destination, or the name of one in the configuration's ``destinations``."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    topics: list[Topic] = Field(default_factory=_all_topics, min_length=1)
    start: Literal["now", "beginning"] = "now"
    """Where a new subscription starts reading: events accepted from now on, or all."""
    purpose: Purpose | None = None
    """What the deliveries are for: then only people whose ``consent.<purpose>`` trait is
    true get them (``profile.erased`` notices always go out)."""

    def needs_profile(self) -> bool:
        if self.shape == "fat" or self.filter.needs_profile() or self.purpose is not None:
            return True
        if isinstance(self.shape, Shape):
            text = repr(self.shape.fields or self.shape.template)
            return "profile." in text
        return False
