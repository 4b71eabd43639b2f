"""Audiences saved through the API (``POST /v1/audiences``) or ``tessera audiences save``.

Configured audiences (``personalization.audiences`` in ``tessera.yaml``) change
with a restart; saved ones are kept in the personalization state, which every
worker and API process shares, so the running personalization processor picks
them up within its refresh interval (as the activation processor picks up
subscriptions created through the API). A saved audience is checked as
strictly as a configured one, and its field errors name the dotted path in the
request (``rule.all.1.audience``):

* the audiences it refers to exist (configured or saved) and no cycle forms;
* its ``computed.*`` paths name declared computed traits;
* its ``event`` leaves are counted already: an event-history condition is
  answered by an implicit computed trait that the processor keeps from the
  events it sees, so one that no configured rule uses has no counts for the
  past. It is refused with the remedy (declare it in the configuration).

A configured audience of the same name wins; configured ones cannot be deleted
or replaced here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from tessera.events.errors import FieldError
from tessera.personalization.model import AudienceConfig, PersonalizationConfig, Rule
from tessera.personalization.rules import audience_order
from tessera.personalization.state.base import SavedAudience, State

log = structlog.get_logger("tessera.personalization")

CONFIG = "config"
API = "api"
ROOTS = frozenset({"traits", "computed", "identifiers", "audiences", "profile_id"})
"""What a rule's ``path`` can start with (see :class:`tessera.personalization.rules.Facts`)."""


class AudienceRejected(ValueError):
    """The audience is invalid; ``errors`` name the fields and the reasons."""

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        super().__init__(message + ": " + "; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.message = message
        self.errors = errors


class AudienceConflict(ValueError):
    """The request clashes with the configuration or with another audience."""


class AudienceNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Catalogued:
    """An audience as the API lists it: its definition and where it comes from."""

    audience: AudienceConfig
    origin: str
    """``config`` (``tessera.yaml``) or ``api`` (saved)."""
    saved: SavedAudience | None = None

    def as_dict(self) -> dict[str, Any]:
        body = self.audience.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["origin"] = self.origin
        if self.saved is not None:
            from tessera.events.envelope import iso_time

            body["created_at"] = iso_time(self.saved.created_at)
            body["updated_at"] = iso_time(self.saved.updated_at)
            body["evaluated"] = self.saved.evaluated
        else:
            body["evaluated"] = True
        return body


def definition(audience: AudienceConfig) -> dict[str, Any]:
    """The audience as the state keeps it (JSON, aliases: ``all``, ``any``, ``not``)."""
    return audience.model_dump(mode="json", by_alias=True, exclude_none=True)


def digest(audience: AudienceConfig) -> str:
    """Stable over key order: the processor compares it to know what it evaluated."""
    raw = orjson.dumps(definition(audience), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def parse(saved: SavedAudience) -> AudienceConfig | None:
    """A stored definition back as a model; None (and a log line) if it no longer parses
    (a release changed the rule language): it is then left out rather than stop a worker."""
    try:
        return AudienceConfig.model_validate(saved.definition, strict=False)
    except ValidationError as exc:
        log.error("audience.unreadable", audience=saved.name, error=str(exc))
        return None


def catalog(config: PersonalizationConfig, saved: Iterable[SavedAudience]) -> list[Catalogued]:
    """Configured audiences (in their order), then saved ones by name; a saved audience
    whose name the configuration took since is left out (the configuration wins)."""
    out = [Catalogued(a, CONFIG) for a in config.audiences]
    taken = {a.name for a in config.audiences}
    for s in sorted(saved, key=lambda s: s.name):
        audience = parse(s)
        if audience is not None and audience.name not in taken:
            out.append(Catalogued(audience, API, s))
    return out


def usable(config: PersonalizationConfig, saved: Iterable[SavedAudience]
           ) -> list[AudienceConfig]:
    """Every audience a processor evaluates, in dependency order.

    Saved audiences are added one at a time (by name); one that would close a cycle
    (two saves racing past each other's check) is left out with a log line, so a worker
    never stops over it.
    """
    chosen = list(config.audiences)
    ordered = audience_order(chosen)
    for c in catalog(config, saved):
        if c.origin != API:
            continue
        try:
            ordered = audience_order([*chosen, c.audience])
        except ValueError as exc:
            log.error("audience.skipped", audience=c.audience.name, error=str(exc))
            continue
        chosen.append(c.audience)
    return ordered


def rule_problems(rule: Rule, audiences: set[str], computed: set[str], counted: set[str],
                  at: str = "rule") -> list[FieldError]:
    """What in ``rule`` refers to something that does not exist (or is not counted),
    each with the dotted path of the request field."""
    problems: list[FieldError] = []
    if rule.path is not None:
        head, _, rest = rule.path.partition(".")
        if head not in ROOTS:
            problems.append(FieldError(f"{at}.path", f"{rule.path!r} starts with {head!r}; a "
                                       f"path starts with one of {', '.join(sorted(ROOTS))}"))
        elif head == "computed" and rest.split(".")[0] not in computed:
            known = ", ".join(sorted(computed)) or "none"
            problems.append(FieldError(f"{at}.path", f"no computed trait named {rest!r} "
                                       f"(declared: {known})"))
    if rule.audience is not None and rule.audience not in audiences:
        problems.append(FieldError(f"{at}.audience", f"no audience named {rule.audience!r}"))
    if rule.event is not None and rule.event.trait().name not in counted:
        problems.append(FieldError(
            f"{at}.event", "no configured rule counts this event history, so the processor "
            "has no counts of past events for it; declare it in the configuration (a "
            "windowed count under personalization.computed_traits, used here as "
            "computed.<name>) and restart the workers"))
    for index, child in enumerate(rule.all_ or []):
        problems += rule_problems(child, audiences, computed, counted, f"{at}.all.{index}")
    for index, child in enumerate(rule.any_ or []):
        problems += rule_problems(child, audiences, computed, counted, f"{at}.any.{index}")
    if rule.not_ is not None:
        problems += rule_problems(rule.not_, audiences, computed, counted, f"{at}.not")
    return problems


def check(config: PersonalizationConfig, saved: Sequence[SavedAudience],
          audience: AudienceConfig) -> list[FieldError]:
    """Why ``audience`` cannot be saved beside the configuration and the other saved ones
    (empty: it can)."""
    others = [c.audience for c in catalog(config, saved) if c.audience.name != audience.name]
    names = {a.name for a in others} | {audience.name}
    computed = {t.name for t in config.computed_traits}
    counted = {t.name for t in config.all_computed()}
    problems = rule_problems(audience.rule, names, computed, counted)
    if not problems:
        try:
            audience_order([*others, audience])
        except ValueError as exc:
            problems.append(FieldError("rule", str(exc)))
    return problems


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as dotted request fields (``rule.all.0.path``)."""
    return [FieldError(".".join(str(p) for p in e["loc"]) or "(body)",
                       "unknown field" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()]


def save(config: PersonalizationConfig, state: State, body: Any,
         now: float | None = None) -> tuple[Catalogued, bool]:
    """Create or replace a saved audience from a request body; (it, whether created).

    :class:`AudienceRejected` for an invalid body, :class:`AudienceConflict` for the
    name of a configured audience.
    """
    if not config.enabled:
        raise AudienceConflict("personalization is off in this installation: the "
                               "configuration declares no computed trait, audience or action, "
                               "so no personalization processor runs to evaluate a saved "
                               "audience; declare one under personalization and restart the "
                               "workers")
    if not isinstance(body, dict):
        raise AudienceRejected("the audience is invalid",
                               [FieldError("(body)", "must be a JSON object with 'name' and "
                                                     "'rule'")])
    try:
        audience = AudienceConfig.model_validate(body, strict=False)
    except ValidationError as exc:
        raise AudienceRejected("the audience is invalid", field_errors(exc)) from None
    if audience.name in {a.name for a in config.audiences}:
        raise AudienceConflict(f"audience {audience.name!r} is declared in the configuration "
                               "file (personalization.audiences); change it there")
    saved = state.saved_audiences()
    problems = check(config, saved, audience)
    if problems:
        raise AudienceRejected("the audience's rule is invalid", problems)
    created = state.save_audience(audience.name, definition(audience), digest(audience),
                                  time.time() if now is None else now)
    found = next(s for s in state.saved_audiences() if s.name == audience.name)
    return Catalogued(audience, API, found), created


def delete(config: PersonalizationConfig, state: State, name: str) -> None:
    """Delete a saved audience; the processor then makes its members exit.

    :class:`AudienceConflict` for a configured one or one another saved audience
    refers to; :class:`AudienceNotFound` if there is none.
    """
    if name in {a.name for a in config.audiences}:
        raise AudienceConflict(f"audience {name!r} is declared in the configuration file "
                               "(personalization.audiences), not saved through the API; "
                               "remove it there and restart the workers")
    saved = state.saved_audiences()
    users = sorted(c.audience.name for c in catalog(config, saved)
                   if c.origin == API and name in c.audience.rule.audiences()
                   and c.audience.name != name)
    if users:
        raise AudienceConflict(f"audience {name!r} is used by the rule of "
                               f"{', '.join(repr(u) for u in users)}; change or delete "
                               f"{'that' if len(users) == 1 else 'those'} first")
    if not state.delete_audience(name):
        raise AudienceNotFound(name)
