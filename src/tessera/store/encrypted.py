"""A store that keeps personal data encrypted: a wrapper around any backend.

Encryption happens at the store boundary, in one place for every backend:
values are sealed just before a backend writes them and opened just after it
reads them, so SQLite files and PostgreSQL tables hold only ciphertext for
them while domain logic, the API and the console see clear values. The
wrapper knows no cryptography: a :class:`Codec` (in practice
:class:`tessera.privacy.encryption.FieldCipher`) decides what is sealed and how.

Sealed: the values of personal traits, timeline events (whole documents), and
outbox payloads. Not sealed: identifier values (they are the lookup index),
trait names, event types, sources and times (needed to order and count).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from tessera.store.base import (
    Erased,
    Identifier,
    NewProfile,
    OutboxMessage,
    Profile,
    ProfileColumns,
    Store,
    StoreTx,
    TimelineEntry,
    Trait,
)

OUTBOX_SCAN = 10_000
"""How many pending outbox messages an erasure inspects for the person's profile ids."""


class Codec(Protocol):
    def wants_trait(self, name: str, value: Any) -> bool: ...
    def seal_trait(self, name: str, value: Any) -> Any: ...
    def open_trait(self, name: str, stored: Any) -> Any: ...
    def seal_event(self, event_uid: str, event: dict[str, Any]) -> dict[str, Any]: ...
    def open_event(self, event_uid: str, stored: dict[str, Any]) -> dict[str, Any]: ...
    def seal_payload(self, message_id: str, payload: bytes) -> bytes: ...
    def open_payload(self, message_id: str, stored: bytes) -> bytes: ...


def _open_traits(codec: Codec, traits: dict[str, Trait]) -> dict[str, Trait]:
    out: dict[str, Trait] = {}
    for name, t in traits.items():
        value = codec.open_trait(name, t.value)
        out[name] = t if value is t.value else Trait(value, t.source, t.time, t.priority,
                                                     t.event_uid)
    return out


def _open_entries(codec: Codec, entries: list[TimelineEntry]) -> list[TimelineEntry]:
    for e in entries:
        e.event = codec.open_event(e.event_uid, e.event)
    return entries


class EncryptedTx(StoreTx):
    """Delegates to the backend's transaction, sealing on the way in and opening on the way out."""

    def __init__(self, inner: StoreTx, codec: Codec) -> None:
        self.inner = inner
        self.codec = codec
        self.single_writer = inner.single_writer

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        return self.inner.applied(event_uids)

    def mark_applied(self, event_uids: Sequence[str], at: float) -> None:
        self.inner.mark_applied(event_uids, at)

    def lock_identifiers(self, identifiers: Sequence[Identifier]) -> None:
        self.inner.lock_identifiers(identifiers)

    def lock_profiles(self, profile_ids: Sequence[str]) -> None:
        self.inner.lock_profiles(profile_ids)

    def lookup(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        return self.inner.lookup(identifiers)

    def identifiers_of(self, profile_ids: Iterable[str]) -> dict[str, list[Identifier]]:
        return self.inner.identifiers_of(profile_ids)

    def create_profile(self, profile_id: str, at: float) -> None:
        self.inner.create_profile(profile_id, at)

    def link(
        self,
        profile_id: str,
        identifiers: Sequence[Identifier],
        event_uid: str,
        at: float,
        source: str,
        reason: str = "deterministic",
    ) -> None:
        self.inner.link(profile_id, identifiers, event_uid, at, source, reason)

    def merge(
        self, into: str, merged: Sequence[str], event_uid: str, at: float, reason: str
    ) -> None:
        self.inner.merge(into, merged, event_uid, at, reason)

    def traits(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Trait]]:
        return {pid: _open_traits(self.codec, traits)
                for pid, traits in self.inner.traits(profile_ids).items()}

    def put_traits(self, profile_id: str, traits: dict[str, Trait]) -> None:
        codec = self.codec
        sealed = {
            name: Trait(codec.seal_trait(name, t.value), t.source, t.time, t.priority, t.event_uid)
            if codec.wants_trait(name, t.value) else t
            for name, t in traits.items()
        }
        self.inner.put_traits(profile_id, sealed)

    def delete_traits(self, profile_ids: Sequence[str]) -> None:
        self.inner.delete_traits(profile_ids)

    def append_timeline(self, profile_id: str, entries: Sequence[TimelineEntry], at: float) -> None:
        seal = self.codec.seal_event
        self.inner.append_timeline(
            profile_id,
            [TimelineEntry(e.event_uid, e.type, e.source, e.time, e.received_at,
                           seal(e.event_uid, e.event)) for e in entries],
            at,
        )

    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        seal = self.codec.seal_payload
        self.inner.add_outbox([(t, m, k, seal(m, p)) for t, m, k, p in messages])

    def create_profiles(self, profiles: Sequence[NewProfile], at: float) -> None:
        codec = self.codec
        sealed = []
        for p in profiles:
            traits = {n: Trait(codec.seal_trait(n, t.value), t.source, t.time, t.priority,
                               t.event_uid) if codec.wants_trait(n, t.value) else t
                      for n, t in p.traits.items()}
            e = p.entry
            entry = TimelineEntry(e.event_uid, e.type, e.source, e.time, e.received_at,
                                  codec.seal_event(e.event_uid, e.event))
            sealed.append(NewProfile(p.id, p.identifiers, p.event_uid, p.source, traits, entry))
        self.inner.create_profiles(sealed, at)  # the backend's bulk path, sealed

    def create_profile_columns(self, columns: ProfileColumns, at: float) -> None:
        """Decoded and sealed value by value through :meth:`create_profiles`: the backend
        must never see a clear trait value or event document."""
        if columns.ids:
            self.create_profiles(columns.profiles(), at)

    def touch(self, profile_ids: Sequence[str], at: float) -> None:
        self.inner.touch(profile_ids, at)

    def split(
        self,
        profile_id: str,
        into_id: str,
        identifiers: Sequence[Identifier],
        event_uids: Sequence[str],
        at: float,
    ) -> None:
        self.inner.split(profile_id, into_id, identifiers, event_uids, at)

    def replace_events(self, profile_id: str, events: dict[str, dict[str, Any]]) -> int:
        seal = self.codec.seal_event
        return self.inner.replace_events(
            profile_id, {uid: seal(uid, ev) for uid, ev in events.items()})


class EncryptedStore(Store):
    """Any :class:`Store`, with personal data sealed by ``codec`` before it reaches the backend."""

    def __init__(self, inner: Store, codec: Codec) -> None:
        self.inner = inner
        self.codec = codec
        self.fast_local_reads = inner.fast_local_reads

    def migrate(self) -> None:
        self.inner.migrate()

    @contextmanager
    def _transaction(self) -> Iterator[StoreTx]:
        with self.inner.transaction() as tx:
            yield EncryptedTx(tx, self.codec)

    def transaction(self) -> AbstractContextManager[StoreTx]:
        return self._transaction()

    def resolve(self, identifier: str) -> str | None:
        return self.inner.resolve(identifier)

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        return self.inner.applied(event_uids)

    def get_profile(self, profile_id: str) -> Profile | None:
        profile = self.inner.get_profile(profile_id)
        if profile is not None:
            profile.traits = _open_traits(self.codec, profile.traits)
        return profile

    def timeline(
        self, profile_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[TimelineEntry]:
        return _open_entries(self.codec, self.inner.timeline(profile_id, limit, before))

    def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        out = self.inner.pending_outbox(limit)
        for m in out:
            m.payload = self.codec.open_payload(m.message_id, m.payload)
        return out

    def delete_outbox(self, ids: Sequence[int]) -> None:
        self.inner.delete_outbox(ids)

    def counts(self) -> dict[str, int]:
        return self.inner.counts()

    def reset(self) -> None:
        self.inner.reset()

    def iter_profile_ids(self) -> Iterator[str]:
        return self.inner.iter_profile_ids()

    def trait_values(self, names: Sequence[str], page: int = 5000
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The backend's bulk read, each value opened as :meth:`StoreTx.traits` opens it."""
        open_trait = self.codec.open_trait
        for pid, values in self.inner.trait_values(names, page):
            yield pid, {n: open_trait(n, v) for n, v in values.items()}

    def changed_profiles(self, since: float) -> list[str]:
        return self.inner.changed_profiles(since)

    def timeline_uids(self, profile_ids: Sequence[str]) -> dict[str, list[str]]:
        return self.inner.timeline_uids(profile_ids)

    def timeline_entries(self, profile_id: str, event_uids: Sequence[str]) -> list[TimelineEntry]:
        return _open_entries(self.codec, self.inner.timeline_entries(profile_id, event_uids))

    def erase(self, profile_id: str, anonymize: bool = False) -> Erased:
        """The backend's erasure, then the outbox messages it could not see into.

        A backend finds outbox messages naming the person by looking into their
        payloads, which are sealed here; so the wrapper opens the pending ones
        and deletes those that name any of the erased profiles. (The bus is
        erased after the store, so a message relayed meanwhile is caught there.)
        """
        erased = self.inner.erase(profile_id, anonymize)
        if erased.profile_ids:
            needles = [pid.encode() for pid in erased.profile_ids]
            doomed = [m.id for m in self.pending_outbox(OUTBOX_SCAN)
                      if any(n in m.payload for n in needles)]
            self.inner.delete_outbox(doomed)
        return erased

    def close(self) -> None:
        self.inner.close()
