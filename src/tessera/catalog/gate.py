"""Validation at ingest: one call per request splits its events by the catalog.

Per source (``sources[].validation``, default the catalog's ``validation``):

- ``enforce``: an event that breaks its schema fails the request (400, each
  problem with its JSON pointer and reason); nothing of it is accepted;
- ``quarantine``: the event is accepted into the ``quarantine`` topic, not
  processed, listed by ``GET /v1/catalog/quarantine`` and ``tessera catalog
  quarantine``, and released to ``events`` after a fix;
- ``allow``: the event is processed and its violation recorded.

Types the catalog does not know follow ``unknown_types``: ``allow`` (the
default), ``quarantine`` or ``reject``. Every violation is counted in the
summary (``GET /v1/catalog/violations``).

Only events whose type is in the catalog are validated; without a catalog
this is one attribute lookup per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tessera.bus.base import BusUnavailable, Message
from tessera.catalog.model import UnknownTypes, ValidationMode
from tessera.catalog.registry import Catalog
from tessera.catalog.schemas import Problem
from tessera.catalog.violations import Outcome, ViolationLog, open_log
from tessera.events import EVENTS_TOPIC
from tessera.events.envelope import Event
from tessera.events.errors import FieldError, InvalidEvents

if TYPE_CHECKING:
    from tessera.config import TesseraConfig
    from tessera.runtime import Runtime

QUARANTINE_TOPIC = "quarantine"
_ATTR = "_tessera_catalog_gate"


@dataclass(slots=True)
class Screened:
    accepted: list[Event]
    quarantined: list[Outcome] = field(default_factory=list)
    allowed: list[Outcome] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)


def _problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"pointer": p.pointer, "reason": p.reason, "summary": p.summary or p.reason}
            for p in problems]


class Gate:
    """The catalog and the per-source settings, ready to screen requests."""

    def __init__(self, config: TesseraConfig, log: ViolationLog | None) -> None:
        assert config.catalog is not None
        self.catalog = Catalog(config.catalog)
        self.log = log
        default_mode, default_unknown = config.catalog.validation, config.catalog.unknown_types
        self.modes: dict[str, tuple[ValidationMode, UnknownTypes]] = {
            s.name: (s.validation or default_mode, s.unknown_types or default_unknown)
            for s in config.sources
        }
        self.default = (default_mode, default_unknown)

    def screen(self, source: str, events: list[Event], indexed: bool = True) -> Screened:
        mode, unknown = self.modes.get(source, self.default)
        catalog = self.catalog
        out: Screened | None = None
        for index, event in enumerate(events):
            problems = catalog.check(event.type, event.dataschema, event.data)
            if problems is None:
                if unknown == "allow":
                    if out is not None:
                        out.accepted.append(event)
                    continue
                problems = [Problem("/type", f"{event.type!r} is not in the event catalog",
                                    "/type: not in the catalog")]
                action = "quarantined" if unknown == "quarantine" else "rejected"
            elif not problems:
                if out is not None:
                    out.accepted.append(event)
                continue
            else:
                action = {"enforce": "rejected", "quarantine": "quarantined",
                          "allow": "allowed"}[mode]
            if out is None:
                out = Screened(accepted=events[:index])
            listed = _problems(problems)
            outcome = Outcome(event.uid, event.id, event.type, source, action, listed,
                              event.to_json() if action == "quarantined" else None)
            if action == "rejected":
                out.rejected.append(outcome)
                position = index if indexed else None
                out.errors += [FieldError(p.pointer, p.reason, position) for p in problems]
            elif action == "quarantined":
                out.quarantined.append(outcome)
            else:
                out.allowed.append(outcome)
                out.accepted.append(event)
        return out if out is not None else Screened(accepted=events)


def gate_of(runtime: Runtime) -> Gate | None:
    """The runtime's gate, built on first use; None without a catalog."""
    gate: Gate | bool | None = runtime.__dict__.get(_ATTR, False)
    if gate is False:
        config = runtime.config
        gate = Gate(config, open_log(runtime.data_dir)) if config.catalog is not None else None
        runtime.__dict__[_ATTR] = gate
    return gate  # type: ignore[return-value]


async def admit(runtime: Runtime, source: str, events: list[Event],
                indexed: bool = True) -> tuple[list[Event], dict[str, Any]]:
    """The events to publish to ``events``, and what to add to the answer.

    Quarantined events are made durable on the ``quarantine`` topic (and
    indexed) before this returns; rejected events raise :class:`InvalidEvents`
    after their violations were counted.
    """
    gate = gate_of(runtime)
    if gate is None:
        return events, {}
    screened = gate.screen(source, events, indexed)
    if screened.accepted is events:
        return events, {}
    assert gate.log is not None
    if screened.rejected:
        await asyncio.to_thread(gate.log.record, screened.rejected)
        raise InvalidEvents(screened.errors)
    if screened.quarantined:
        try:
            await runtime.bus.publish(QUARANTINE_TOPIC, [
                Message(o.uid, o.uid, o.event or b"") for o in screened.quarantined])
        except BusUnavailable as exc:
            from tessera.api.errors import ApiError

            raise ApiError(503, "unavailable", f"events cannot be stored right now: {exc}",
                           headers={"Retry-After": "5"}) from None
    outcomes = screened.quarantined + screened.allowed
    if outcomes:
        await asyncio.to_thread(gate.log.record, outcomes)
    extra: dict[str, Any] = {}
    if screened.quarantined:
        extra["quarantined"] = len(screened.quarantined)
        extra["quarantined_ids"] = [o.event_id for o in screened.quarantined]
    if screened.allowed:
        extra["violations"] = len(screened.allowed)
    return screened.accepted, extra


@dataclass(slots=True)
class ReleaseResult:
    released: list[str] = field(default_factory=list)
    still_invalid: dict[str, list[dict[str, str]]] = field(default_factory=dict)


async def release(runtime: Runtime, uids: list[str] | None = None,
                  event_type: str | None = None) -> ReleaseResult:
    """Validate quarantined events again against the current catalog; publish the valid ones
    to ``events`` and mark them released. ``uids`` None: every pending one (of ``event_type``)."""
    gate = gate_of(runtime)
    result = ReleaseResult()
    if gate is None or gate.log is None:
        return result
    pending = await asyncio.to_thread(gate.log.quarantined, event_type, False, 100_000)
    if uids is not None:
        wanted = set(uids)
        pending = [q for q in pending if q.uid in wanted or q.event_id in wanted]
    ready: list[Event] = []
    for q in pending:
        event = Event.from_json(q.event)
        problems = gate.catalog.check(event.type, event.dataschema, event.data)
        if problems is None:
            _, unknown = gate.modes.get(event.source_name, gate.default)
            if unknown != "allow":
                problems = [Problem("/type", f"{event.type!r} is not in the event catalog",
                                    "/type: not in the catalog")]
            else:
                problems = []
        if problems:
            listed = _problems(problems)
            result.still_invalid[q.uid] = listed
            await asyncio.to_thread(gate.log.still_invalid, q.uid, listed)
        else:
            ready.append(event)
    if ready:
        await runtime.bus.publish(
            EVENTS_TOPIC, [Message(e.uid, e.partition_key, e.to_json()) for e in ready])
        await asyncio.to_thread(gate.log.released, [e.uid for e in ready])
        result.released = [e.uid for e in ready]
    return result
