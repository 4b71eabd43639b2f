"""Journey definitions, as in the configuration's ``journeys:`` section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tessera.activation.model import (
    NAME_PATTERN,
    Condition,
    Destination,
    Duration,
    Filter,
    Model,
    RetryPolicy,
)

END = "exit"
"""Jump target that completes the journey."""


class WaitStep(Model):
    """Wait a duration (``for``), or ``until`` a matching event of the profile (with a
    ``timeout``)."""

    for_: Duration | None = Field(default=None, alias="for")
    until: Filter | None = None
    timeout: Duration | None = None
    on_event: str | None = None
    """Step to go to when the awaited event arrives (default: the next step)."""
    on_timeout: str | None = None
    """Step to go to when the timeout passes (default: the next step)."""

    @model_validator(mode="after")
    def _one(self) -> WaitStep:
        if (self.for_ is None) == (self.until is None):
            raise ValueError("a wait has either 'for' (a duration) or 'until' (an event filter)")
        if self.until is not None and self.timeout is None:
            raise ValueError("a wait 'until' an event needs a 'timeout'")
        return self


class ConditionStep(Model):
    if_: Condition = Field(alias="if")
    then: str | None = None
    """Step when the condition holds (default: the next step)."""
    else_: str = Field(default=END, alias="else")
    """Step when it does not (default: complete the journey)."""


class EmitAction(Model):
    """Publish an event (topic ``derived``, source ``tessera/journeys``) for the profile."""

    type: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)
    """Values may hold ``{{ path }}`` placeholders (``profile.traits.first_name``,
    ``trigger.data.x``)."""


class CallAction(Model):
    """Deliver a message to a destination (with the subscriptions' retries and dead letters)."""

    destination: Destination | str
    data: dict[str, Any] = Field(default_factory=dict)
    """The message; values may hold ``{{ path }}`` placeholders."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class ActionStep(Model):
    emit: EmitAction | None = None
    call: CallAction | None = None

    @model_validator(mode="after")
    def _one(self) -> ActionStep:
        if (self.emit is None) == (self.call is None):
            raise ValueError("an action has either 'emit' or 'call'")
        return self


class Step(Model):
    id: str = Field(pattern=NAME_PATTERN)
    wait: WaitStep | None = None
    condition: ConditionStep | None = None
    action: ActionStep | None = None
    exit: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        kinds = [k for k in (self.wait, self.condition, self.action, self.exit) if k is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.id!r} needs exactly one of wait, condition, action, exit")
        return self

    @property
    def kind(self) -> str:
        for name in ("wait", "condition", "action"):
            if getattr(self, name) is not None:
                return name
        return "exit"


class JourneyConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    trigger: Filter
    """The event that enters a profile into the journey."""
    exit_on: list[Filter] = Field(default_factory=list)
    """Goal events: a matching event of the profile leaves the journey at once."""
    steps: list[Step] = Field(min_length=1)
    reentry: bool = False
    """Allow a profile in this journey more than once at a time (one instance per trigger)."""

    @model_validator(mode="after")
    def _targets(self) -> JourneyConfig:
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"journey {self.name!r}: step ids must be unique")
        known = {*ids, END}
        for step in self.steps:
            targets = []
            if step.wait is not None:
                targets += [step.wait.on_event, step.wait.on_timeout]
            if step.condition is not None:
                targets += [step.condition.then, step.condition.else_]
            for target in targets:
                if target is not None and target not in known:
                    raise ValueError(
                        f"journey {self.name!r}, step {step.id!r}: no step {target!r} to go to"
                    )
        return self

    def index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise KeyError(step_id)
