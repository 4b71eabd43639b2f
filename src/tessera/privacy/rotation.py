"""Key rotation: re-encrypt what the store holds under the current key, in resumable steps.

After a new key is put first in ``TESSERA_PII_KEYS`` (and every process is
restarted with it), new data is encrypted with it, but what older keys wrote
stays as it was. :func:`rotate` walks the live profiles in id order, a batch
per transaction, and rewrites every sealed trait value and timeline event not
already under the current key (or, with encryption switched off, writes them
back in the clear). Values already current are skipped, so the work is
incremental; after each batch the last profile id is saved in the trust
records, so an interrupted run (or one stopped by ``max_profiles``) continues
where it stopped. When a pass completes and no pending outbox message uses an
old key, the older key ids are retired: a process may then start without them.

It works on the store contract (through the encrypting wrapper's backend), so
every backend rotates the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tessera.privacy.encryption import FieldCipher
from tessera.privacy.records.base import TrustRecords
from tessera.store.base import Store, Trait
from tessera.store.encrypted import EncryptedStore

STATE = "encryption.rotation"
TIMELINE_PAGE = 500
CLEAR = "(clear)"
"""The target when encryption is switched off: values are written back unencrypted."""


@dataclass(slots=True)
class RotationReport:
    target: str
    profiles: int = 0
    traits: int = 0
    events: int = 0
    complete: bool = False
    retired: list[str] = field(default_factory=list)
    waiting_outbox: int = 0
    """Pending outbox messages still under an old key (relayed by a running worker)."""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "profiles": self.profiles, "traits": self.traits,
                "events": self.events, "complete": self.complete, "retired": self.retired,
                "waiting_outbox": self.waiting_outbox}


def _stale_trait(cipher: FieldCipher, target: str, name: str, stored: Any) -> bool:
    kid = cipher.trait_key_id(stored)
    if target == CLEAR:
        return kid is not None
    if kid is None:  # in the clear: personal traits written before encryption was on
        return cipher.wants_trait(name, stored)
    return kid != target


def _stale_event(cipher: FieldCipher, target: str, stored: dict[str, Any]) -> bool:
    kid = cipher.event_key_id(stored)
    if target == CLEAR:
        return kid is not None
    if kid is None:
        return cipher.encrypt_events and bool(stored)
    return kid != target


def _rotate_profile(store: EncryptedStore, pid: str, target: str,
                    report: RotationReport) -> None:
    cipher = store.codec
    assert isinstance(cipher, FieldCipher)
    raw_store = store.inner
    with raw_store.transaction() as raw:
        raw.lock_profiles([pid])  # the processor waits for this profile, not the reverse
        stored = raw.traits([pid])[pid]
        stale = {n: t for n, t in stored.items() if _stale_trait(cipher, target, n, t.value)}
        if stale:
            rewritten: dict[str, Trait] = {}
            for name, t in stale.items():
                value = cipher.open_trait(name, t.value)
                if cipher.wants_trait(name, value):
                    value = cipher.seal_trait(name, value)
                rewritten[name] = Trait(value, t.source, t.time, t.priority, t.event_uid)
            raw.put_traits(pid, rewritten)
            report.traits += len(rewritten)
        # the timeline is read while this transaction holds the profile's lock, so no
        # merge can move entries in or out until the rewrite commits
        before: tuple[float, str] | None = None
        while True:
            page = raw_store.timeline(pid, TIMELINE_PAGE, before)
            events = {e.event_uid: cipher.open_event(e.event_uid, e.event) for e in page
                      if _stale_event(cipher, target, e.event)}
            if events:
                raw.replace_events(pid, {uid: cipher.seal_event(uid, ev)
                                         for uid, ev in events.items()})
                report.events += len(events)
            if len(page) < TIMELINE_PAGE:
                break
            before = (page[-1].time, page[-1].event_uid)


def rotate(store: Store, records: TrustRecords, *, max_profiles: int | None = None,
           restart: bool = False,
           progress: Callable[[RotationReport], None] | None = None) -> RotationReport:
    """Re-encrypt under the current key; resumable. ``store`` must be the encrypting wrapper.

    A pass that rewrote anything is followed by another: a merge during the
    pass can move entries not yet visited into a profile already visited. Old
    key ids are retired only after a pass that found nothing left to rewrite.
    """
    if not isinstance(store, EncryptedStore) or not isinstance(store.codec, FieldCipher):
        raise ValueError("no encryption keys are given: there is nothing to rotate")
    cipher = store.codec
    target = cipher.current or CLEAR
    saved = records.get_state(STATE)
    cursor = orjson.loads(saved) if saved else {}
    if restart or cursor.get("target") != target:
        cursor = {"target": target, "after": "", "changed": 0}
    report = RotationReport(target)

    def save() -> None:
        records.set_state(STATE, orjson.dumps(cursor).decode())

    while True:
        for pid in store.inner.iter_profile_ids():
            if pid <= cursor["after"]:
                continue
            if max_profiles is not None and report.profiles >= max_profiles:
                save()
                return report
            before = report.traits + report.events
            _rotate_profile(store, pid, target, report)
            cursor["changed"] += report.traits + report.events - before
            report.profiles += 1
            cursor["after"] = pid
            if report.profiles % 100 == 0:
                save()
                if progress is not None:
                    progress(report)
        if cursor["changed"] == 0:
            break
        cursor.update(after="", changed=0)  # verify with a pass that finds nothing to do
        save()
    save()
    report.complete = True
    old = [m for m in store.inner.pending_outbox(10_000)
           if (kid := cipher.payload_key_id(m.payload)) is not None and kid != target]
    report.waiting_outbox = len(old)
    if not old:
        report.retired = [k.id for k in records.data_keys()
                          if k.id != target and k.retired_at is None]
        records.retire_data_keys(report.retired, time.time())
    return report
