"""The suppression list: erased identifiers may not bring the person back.

After an erasure, a late event carrying one of the person's identifiers would
otherwise create a new profile with the same personal data. Each erased
identifier's SHA-256 digest (of ``type:value``, normalized) goes into the
trust records, never the value itself. Ingest screens events before they are
written to the bus, and the profiles processor screens them again before it
applies them (an event already on the bus, or accepted while the erasure ran).
The policy (``privacy.suppression``) is to drop such events, or to keep them
anonymized: the erased identifiers are removed from the event and every
string of its data equal to one of them is replaced by ``[erased]``.

Ingest must not depend on the store being up (only on the bus): when the list
cannot be read there, it screens with the last list it read and says so in
the log, and the processor, which reads the list for every batch and retries
while it cannot, is the guarantee.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterable
from typing import Any

import structlog

from tessera.events.envelope import Event
from tessera.privacy.records.base import TrustRecords
from tessera.store.base import Identifier

ERASED = "[erased]"
INGEST_RECHECK_SECONDS = 0.5
"""How stale ingest's copy of the list may be; an erasure waits this long (and a
little) after suppressing before it erases the bus, so no API node can still be
accepting the person's events with an older list."""

log = structlog.get_logger("tessera.privacy")


def identifier_digest(type_: str, value: str) -> str:
    return hashlib.sha256(f"{type_}:{value}".encode("utf-8", "surrogateescape")).hexdigest()


def _expanded(identifiers: Iterable[Identifier]) -> list[Identifier]:
    out: list[Identifier] = []
    for type_, value in identifiers:
        if type_ == "previous_id":  # the processor links it as either of these
            out += [("user_id", value), ("anonymous_id", value)]
        out.append((type_, value))
    return out


class Suppression:
    """Screens events against the suppression list, re-reading it when it changed.

    ``recheck_seconds`` bounds how often the list's version is read: 0 (the
    processor) reads it for every batch, the API reads it at most twice a
    second and relies on the processor for events accepted in between.
    """

    def __init__(self, records: TrustRecords, mode: str = "drop",
                 recheck_seconds: float = 0.0, fail_open: bool = False) -> None:
        self.records = records
        self.mode = mode
        self.recheck_seconds = recheck_seconds
        self.fail_open = fail_open
        """Screen with the last list read when the records cannot be read (ingest)."""
        self._version: int | None = None
        self._digests: frozenset[str] = frozenset()
        self._checked = 0.0
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether the next :meth:`digests` reads the records (a caller on an event loop
        then calls it in a thread)."""
        return self._version is None or time.monotonic() - self._checked >= self.recheck_seconds

    def digests(self) -> frozenset[str]:
        now = time.monotonic()
        if self._version is not None and now - self._checked < self.recheck_seconds:
            return self._digests
        if self.fail_open:
            if not self._lock.acquire(blocking=False):
                return self._digests  # another request is reading it: don't queue up
        else:
            self._lock.acquire()
        try:
            version = self.records.suppression_version()
            if version != self._version:
                self._digests = frozenset(self.records.suppressed())
                self._version = version
            self._checked = now
        except Exception as exc:
            if not self.fail_open:
                raise
            self._checked = now  # try again after recheck_seconds
            log.warning("suppression.unreadable", error=f"{type(exc).__name__}: {exc}",
                        using=f"the list as last read ({len(self._digests)} identifiers)")
        finally:
            self._lock.release()
        return self._digests

    def forget_cache(self) -> None:
        self._version = None

    def screen(self, events: list[Event]) -> list[Event]:
        """The events to keep, anonymized where the policy says so."""
        suppressed = self.digests()
        if not suppressed:
            return events
        kept: list[Event] = []
        for event in events:
            hits = {(t, v) for t, v in _expanded(event.identifiers)
                    if identifier_digest(t, v) in suppressed}
            if not hits:
                kept.append(event)
            elif self.mode == "anonymize":
                kept.append(anonymized(event, hits))
        return kept


def anonymized(event: Event, hits: set[Identifier]) -> Event:
    values = {v for _, v in hits}
    identifiers = [(t, v) for t, v in event.identifiers if v not in values]
    return dataclasses.replace(event, identifiers=identifiers,
                               data=_scrub(event.data, values),
                               subject=ERASED if event.subject in values else event.subject)


def _scrub(value: Any, values: set[str]) -> Any:
    if isinstance(value, str):
        return ERASED if value in values else value
    if isinstance(value, dict):
        return {k: _scrub(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, values) for v in value]
    return value
