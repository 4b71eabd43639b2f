"""Erasure of a whole resolved person, everywhere Tessera keeps them.

One request names one identifier; the person is everything the identity graph
linked to it: every identifier, every profile merged in, every event. The
steps run in an order that makes a crash or a concurrent event harmless:

1. the person's identifiers go on the suppression list first, so no event
   (late, in flight, or replayed) can bring them back while the rest runs;
2. the warehouse (the step most likely to be busy) and the journey state;
3. the store, in one transaction (or the profile is anonymized);
4. the bus: events, derived events and dead letters that name the person;
5. the personalization state (computed traits, audience memberships, offer
   history) is erased at once, its members leaving every audience with
   ``segment.exited`` (reason ``erased``, nothing but the profile id), as the
   personalization processor would on ``profile.erased``, which then finds
   nothing left to do; ``profile.erased`` is published to the ``derived`` topic so
   that subscribers can erase their copies, and the request is audited without
   any personal data (the profile id and counts only).

Running the same request again is safe: whatever is left is removed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tessera.bus.base import Message
from tessera.events import DERIVED_TOPIC, EVENTS_TOPIC
from tessera.events.envelope import Event, iso_time
from tessera.privacy.records.base import AuditEntry
from tessera.privacy.suppression import INGEST_RECHECK_SECONDS, identifier_digest
from tessera.store.base import Identifier

if TYPE_CHECKING:
    from tessera.runtime import Runtime

ERASED_SOURCE = "tessera/privacy"
MIN_SUBSTRING = 6
"""Undecodable payloads are matched by substring, for identifier values at least this long."""


class InvalidIdentifier(ValueError):
    """The identifier is not ``type:value`` of a known type, or its value normalizes to nothing."""


class ErasureBusy(RuntimeError):
    """A part of the installation could not be erased right now (the warehouse file is
    locked by another process); the request can be repeated."""


@dataclass(slots=True)
class ErasureReport:
    request_id: str
    profile_found: bool
    mode: str
    profile_ids: list[str] = field(default_factory=list)
    identifiers: int = 0
    events: int = 0
    bus_messages: int = 0
    journey_rows: int = 0
    warehouse_rows: int = 0
    personalization_memberships: int = 0
    """Audience memberships ended (their computed traits and offer history went too)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_identifier(runtime: Runtime, text: str) -> Identifier:
    """``type:value`` normalized as ingest normalizes it (``Jane@Example.com`` -> lower case)."""
    type_, sep, raw = text.partition(":")
    if not sep or not type_ or not raw:
        raise InvalidIdentifier("must be 'type:value', e.g. 'email:jane@example.com'")
    if runtime.config.identifier(type_) is None:
        known = ", ".join(sorted(i.type for i in runtime.config.all_identifiers()))
        raise InvalidIdentifier(f"unknown identifier type {type_!r}; known: {known}")
    value = runtime.extractor.normalize(type_, raw)
    if not value:
        raise InvalidIdentifier(f"the {type_} value is not a usable identifier")
    return type_, value


def matcher(identifiers: set[Identifier], profile_ids: set[str],
            event_uids: set[str]) -> Callable[[bytes], bool]:
    """Whether a bus payload belongs to the person: exact, typed comparisons only.

    An event belongs if it is one of the person's timeline events, carries one
    of their identifiers, or names one of their profile ids anywhere (derived
    events, journey events). Comparing typed pairs rather than substrings keeps
    a user id like ``42`` from erasing strangers' events that merely contain 42.
    """
    long_values = [v.encode() for _, v in identifiers if len(v) >= MIN_SUBSTRING]

    def names_profile(value: Any) -> bool:
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if item in profile_ids:
                    return True
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return False

    def match(payload: bytes) -> bool:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            return any(v in payload for v in long_values)
        if doc.get("uid") in event_uids:
            return True
        for pair in doc.get("identifiers") or ():
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            type_, value = pair[0], pair[1]
            if (type_, value) in identifiers or (type_ == "profile_id" and value in profile_ids):
                return True
            if type_ == "previous_id" and (("user_id", value) in identifiers
                                           or ("anonymous_id", value) in identifiers):
                return True
        return bool(profile_ids) and names_profile(doc.get("data"))

    return match


async def erase_person(runtime: Runtime, identifier: Identifier, actor: str) -> ErasureReport:
    from tessera.journeys.state import existing_journey_state

    mode = runtime.config.privacy.erasure
    report = ErasureReport(request_id=f"er_{uuid.uuid4().hex[:16]}", profile_found=False,
                           mode=mode)
    store = runtime.store
    type_, value = identifier
    pid = await asyncio.to_thread(store.resolve, f"{type_}:{value}")
    profile = await asyncio.to_thread(store.get_profile, pid) if pid else None
    identifiers: set[Identifier] = {identifier}
    pids: set[str] = set()
    if profile is not None:
        report.profile_found = True
        identifiers |= {(i.type, i.value) for i in profile.identities}
        pids = {profile.id} | {m.merged for m in profile.merged_from}
    # 1. nothing may bring them back from now on
    suppressed_at = time.monotonic()
    await asyncio.to_thread(runtime.records.suppress,
                            sorted(identifier_digest(t, v) for t, v in identifiers), time.time())
    runtime.suppression.forget_cache()  # this process's ingest: at once
    # 2. the warehouse and the journeys, while the profile still resolves (a retry works)
    if pids:
        report.warehouse_rows = await asyncio.to_thread(_erase_warehouse, runtime, sorted(pids))
    early = matcher(identifiers, pids, set())

    def journeys() -> int:  # beside the store: activation.db, or the store's PostgreSQL
        state = existing_journey_state(runtime.store_url, runtime.data_dir)
        if state is None:
            return 0
        try:
            return state.erase(sorted(pids), early)
        finally:
            state.close()

    report.journey_rows = await asyncio.to_thread(journeys)
    # 3. the store
    uids: set[str] = set()
    if profile is not None:
        erased = await asyncio.to_thread(store.erase, profile.id, mode == "anonymize")
        identifiers |= set(erased.identifiers)
        pids |= set(erased.profile_ids)
        uids = set(erased.event_uids)
        report.events = len(uids)
        if erased.identifiers:  # linked since step 1: suppress those too
            await asyncio.to_thread(
                runtime.records.suppress,
                sorted(identifier_digest(t, v) for t, v in erased.identifiers), time.time())
    report.identifiers = len(identifiers)
    report.profile_ids = sorted(pids)
    # 4. the bus and its dead letters, once every API node's ingest has the new list
    #    (an event accepted with an older one would land on the bus after this step)
    await asyncio.sleep(max(0.0, suppressed_at + INGEST_RECHECK_SECONDS + 0.2
                            - time.monotonic()))
    report.bus_messages = await runtime.bus.erase([EVENTS_TOPIC, DERIVED_TOPIC],
                                                  matcher(identifiers, pids, uids))
    # 5. the personalization state, then tell subscribers, and remember that it was done
    #    (without the person)
    if profile is not None:
        message, erased_event = _erased_message(report, profile.id)
        report.personalization_memberships = await _erase_personalization(runtime,
                                                                          erased_event)
        await runtime.bus.publish(DERIVED_TOPIC, [message])
    await asyncio.to_thread(runtime.records.audit, AuditEntry(
        action="privacy.erasure", actor=actor, at=time.time(),
        target=profile.id if profile else "(no profile)",
        details={k: v for k, v in report.as_dict().items() if k != "profile_ids"}
        | {"merged_profile_ids": sorted(pids - {profile.id}) if profile else []}))
    return report


def _erase_warehouse(runtime: Runtime, pids: list[str]) -> int:
    path = runtime.data_dir / "warehouse.duckdb"
    if not path.exists():
        return 0
    import duckdb

    from tessera.warehouse import Warehouse

    try:
        warehouse = Warehouse(runtime.data_dir)
    except duckdb.IOException as exc:  # another process holds the file
        raise ErasureBusy(f"the warehouse file is in use: {exc}") from None
    try:
        return warehouse.erase(pids)
    finally:
        warehouse.close()


async def _erase_personalization(runtime: Runtime, erased: Event) -> int:
    """Apply ``profile.erased`` to the personalization state now, rather than leave the
    person's computed traits, memberships and offer history until a personalization
    processor reads the event (none may run: personalization switched off, workers
    stopped). Deleted rows are overwritten where the backend allows it. The exits go to
    the bus after the bus erasure, so they stay; the event is recorded as applied, so the
    processor does not do it twice. The number of memberships ended."""
    from tessera.personalization.engine import Personalizer
    from tessera.personalization.state import existing_state
    from tessera.processing.worker import relay_outbox

    state = await asyncio.to_thread(existing_state, runtime.store_url, runtime.data_dir)
    if state is None:
        return 0
    try:
        engine = Personalizer(runtime.config.personalization, runtime.store, state)

        def erase() -> int:
            with state.erasing():
                return engine.erase(erased).exited

        exited = await asyncio.to_thread(erase)
        await relay_outbox(state, runtime.bus)
        return exited
    finally:
        await asyncio.to_thread(state.close)


def _erased_message(report: ErasureReport, profile_id: str) -> tuple[Message, Event]:
    now = time.time()
    event = Event(
        id=f"{report.request_id}:profile.erased", source=ERASED_SOURCE, type="profile.erased",
        time=now, received_at=now, source_name="tessera",
        data={"profile_id": profile_id, "merged_profile_ids":
              [p for p in report.profile_ids if p != profile_id],
              "request_id": report.request_id, "mode": report.mode, "erased_at": iso_time(now)},
        identifiers=[("profile_id", profile_id)], subject=profile_id,
        datacontenttype="application/json",
    )
    return Message(event.uid, event.partition_key, event.to_json()), event
