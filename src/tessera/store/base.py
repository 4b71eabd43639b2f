"""The store contract: profiles, identity links, traits and timelines.

The store holds the projections of the event log. Everything a processor
changes for one batch of events happens in one :class:`StoreTx`, together with
the record of which events it applied, so a redelivered event finds itself
recorded and changes nothing (exactly-once effects over at-least-once delivery).

Domain logic (identity resolution, survivorship) lives outside the store and
talks to it only through these methods; a backend is plain data access.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tessera.store.outbox_pack import PackedMessages, expand

Identifier = tuple[str, str]


@dataclass(slots=True)
class Trait:
    value: Any
    source: str
    time: float
    """Event time of the event that set it."""
    priority: int = 0
    event_uid: str = ""


@dataclass(slots=True)
class IdentityLink:
    type: str
    value: str
    profile_id: str
    event_uid: str
    """The event that first linked this identifier to a profile."""
    linked_at: float
    source: str = ""
    reason: str = "deterministic"


@dataclass(slots=True)
class MergeRecord:
    into: str
    merged: str
    event_uid: str
    at: float
    reason: str


@dataclass(slots=True)
class Profile:
    id: str
    created_at: float
    updated_at: float
    event_count: int
    traits: dict[str, Trait] = field(default_factory=dict)
    identities: list[IdentityLink] = field(default_factory=list)
    merged_from: list[MergeRecord] = field(default_factory=list)


@dataclass(slots=True)
class TimelineEntry:
    event_uid: str
    type: str
    source: str
    time: float
    received_at: float
    event: dict[str, Any]
    """The whole event as a structured CloudEvent."""


@dataclass(slots=True)
class NewProfile:
    """A profile made whole by one event: what the bulk import path creates in one go."""

    id: str
    identifiers: list[Identifier]
    event_uid: str
    source: str
    traits: dict[str, Trait]
    entry: TimelineEntry


@dataclass(slots=True)
class ProfileColumns:
    """New profiles made whole by one event each, as columns (the columnar import path).

    Row ``i`` is profile ``ids[i]``, created by event ``event_uids[i]`` of ``types[i]``
    at ``times[i]``; ``documents[i]`` is that event's CloudEvent, already JSON text. Links
    and traits name their row (``link_rows``, ``trait_rows``); trait values are JSON
    text too, and a trait's time and event are its row's. Columns rather than one
    object per profile, so that a backend can write a million rows without touching
    each value in Python; :meth:`StoreTx.create_profile_columns` writes the same rows
    as :meth:`StoreTx.create_profiles`. JSON as ``str``, not ``bytes``: every bytes
    object orjson returns keeps a 4 KiB allocation alive (measured: 393 MiB for
    100,000 small documents, 13 MiB once decoded).
    """

    source: str
    ids: list[str]
    event_uids: list[str]
    types: list[str]
    times: list[float]
    received_at: list[float]
    documents: list[str]
    link_rows: list[int]
    link_types: list[str]
    link_values: list[str]
    trait_rows: list[int]
    trait_names: list[str]
    trait_values: list[str]
    trait_priorities: list[int]

    def profiles(self) -> list[NewProfile]:
        """The same profiles as :class:`NewProfile` objects (decoding every value)."""
        import orjson

        idents: list[list[Identifier]] = [[] for _ in self.ids]
        for row, type_, value in zip(self.link_rows, self.link_types, self.link_values,
                                     strict=True):
            idents[row].append((type_, value))
        traits: list[dict[str, Trait]] = [{} for _ in self.ids]
        for row, name, raw, prio in zip(self.trait_rows, self.trait_names, self.trait_values,
                                        self.trait_priorities, strict=True):
            traits[row][name] = Trait(orjson.loads(raw), self.source, self.times[row], prio,
                                      self.event_uids[row])
        return [NewProfile(pid, idents[i], self.event_uids[i], self.source, traits[i],
                           TimelineEntry(self.event_uids[i], self.types[i], self.source,
                                         self.times[i], self.received_at[i],
                                         orjson.loads(self.documents[i])))
                for i, pid in enumerate(self.ids)]


@dataclass(slots=True)
class OutboxMessage:
    id: int
    topic: str
    message_id: str
    key: str
    payload: bytes


@dataclass(slots=True)
class Erased:
    """What :meth:`Store.erase` removed: enough to find the person elsewhere (bus, files)."""

    profile_ids: list[str]
    """The profile and every profile merged into it."""
    identifiers: list[Identifier]
    event_uids: list[str]
    """The events of the person's timeline."""


class StoreTx(abc.ABC):
    """One atomic unit of work. Nothing is visible to readers until it commits."""

    single_writer: bool = False
    """True when no other transaction can run concurrently (no need to re-check after locking)."""

    @abc.abstractmethod
    def applied(self, event_uids: Sequence[str]) -> set[str]:
        """Which of these events were already applied (committed) earlier."""

    @abc.abstractmethod
    def mark_applied(self, event_uids: Sequence[str], at: float) -> None:
        """Record events as applied, atomically with their effects."""

    @abc.abstractmethod
    def lock_identifiers(self, identifiers: Sequence[Identifier]) -> None:
        """Serialize concurrent transactions that touch any of these identifiers.

        Backends with one writer at a time may do nothing. Others take the
        locks in one sorted order so that concurrent merges cannot deadlock.
        """

    @abc.abstractmethod
    def lock_profiles(self, profile_ids: Sequence[str]) -> None:
        """Lock these profiles' rows until commit, in sorted order (no-op for one writer)."""

    @abc.abstractmethod
    def lookup(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        """The profile each known identifier is linked to."""

    @abc.abstractmethod
    def identifiers_of(self, profile_ids: Iterable[str]) -> dict[str, list[Identifier]]:
        """Every identifier linked to each profile."""

    @abc.abstractmethod
    def create_profile(self, profile_id: str, at: float) -> None: ...

    @abc.abstractmethod
    def link(
        self,
        profile_id: str,
        identifiers: Sequence[Identifier],
        event_uid: str,
        at: float,
        source: str,
        reason: str = "deterministic",
    ) -> None:
        """Link new identifiers to a profile, recording the event that caused it."""

    @abc.abstractmethod
    def merge(
        self, into: str, merged: Sequence[str], event_uid: str, at: float, reason: str
    ) -> None:
        """Move links and timeline of ``merged`` profiles into ``into``; keep a merge record.

        Traits are not touched: the caller decides survivorship and calls
        :meth:`put_traits` / :meth:`delete_traits`. A merged profile's id keeps
        resolving to ``into``.
        """

    @abc.abstractmethod
    def traits(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Trait]]: ...

    @abc.abstractmethod
    def put_traits(self, profile_id: str, traits: dict[str, Trait]) -> None:
        """Insert or replace these traits of the profile."""

    @abc.abstractmethod
    def delete_traits(self, profile_ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def append_timeline(self, profile_id: str, entries: Sequence[TimelineEntry], at: float) -> None:
        """Add events to the profile's timeline and count them on the profile."""

    @abc.abstractmethod
    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        """Queue ``(topic, message_id, key, payload)`` for the bus, atomically with the effects."""

    def add_outbox_packed(self, packed: PackedMessages) -> None:
        """Queue the messages of ``packed`` (one template, many records) for the bus.

        :meth:`Store.pending_outbox` gives them back, in order, as
        :func:`~tessera.store.outbox_pack.expand` spells them out. This default stores
        them spelled out through :meth:`add_outbox`: PostgreSQL keeps full messages
        (its erasure deletes a message by its row; packed rows would need the rewrite
        that SQLite's erasure does), and the encrypting wrapper keeps this default, so
        it seals each payload on its way there and never hands its backend a packed
        row, whose records are clear text. SQLite stores the packed rows themselves
        (:mod:`tessera.store.outbox_pack` tells why).
        """
        if packed.count:
            self.add_outbox(expand(packed))

    def create_profiles(self, profiles: Sequence[NewProfile], at: float) -> None:
        """Create profiles that one event each makes whole (links, traits, one timeline entry).

        The same rows as ``create_profile``, ``link``, ``put_traits`` and
        ``append_timeline`` per profile, which is what this default does; a backend
        may write them with one statement per table (the bulk import's speed).
        """
        for p in profiles:
            self.create_profile(p.id, at)
            if p.identifiers:
                self.link(p.id, p.identifiers, p.event_uid, at, p.source)
            if p.traits:
                self.put_traits(p.id, p.traits)
            self.append_timeline(p.id, [p.entry], at)

    def create_profile_columns(self, columns: ProfileColumns, at: float) -> None:
        """:meth:`create_profiles` for profiles given as columns (the columnar import).

        This default decodes them into :class:`NewProfile` objects; a backend may
        write the columns as they are (SQLite: one ``INSERT ... SELECT`` per table).
        """
        if columns.ids:
            self.create_profiles(columns.profiles(), at)

    def create_packed_profiles(self, packed: Any) -> bool:
        """Write new profiles packed by :meth:`Store.column_packer`'s function, unless the
        store knows one of their events or identifiers; whether they were written. Only
        called with what this store's packer made; a store without one never is."""
        raise NotImplementedError

    def touch(self, profile_ids: Sequence[str], at: float) -> None:
        """Mark profiles as changed at ``at`` (``updated_at``) without adding events.

        For writers that change traits alone (SQL traits from the warehouse), so
        that :meth:`Store.changed_profiles` sees them.
        """
        for pid in profile_ids:
            self.append_timeline(pid, [], at)

    def split(
        self,
        profile_id: str,
        into_id: str,
        identifiers: Sequence[Identifier],
        event_uids: Sequence[str],
        at: float,
    ) -> None:
        """Undo part of a merge: move links and timeline entries out of ``profile_id``.

        The links of ``identifiers`` and the timeline entries of ``event_uids``
        move from ``profile_id`` to ``into_id``: a profile merged into
        ``profile_id`` earlier (it is revived, its merge record removed) or a
        new id (the profile is created). Both profiles' event counts are
        recounted. Traits are not touched: the caller re-derives them. Optional
        (identity unmerge needs it); backends that lack it raise NotImplementedError.
        """
        raise NotImplementedError

    def replace_events(self, profile_id: str, events: dict[str, dict[str, Any]]) -> int:
        """Replace the stored event document of these timeline entries (by event uid).

        For re-encryption under a new key (``tessera privacy rotate-key``): type,
        times and order stay. Returns how many entries were found. Optional;
        backends that lack it raise NotImplementedError.
        """
        raise NotImplementedError


class Store(abc.ABC):
    """The profile store. Reads are safe from any thread."""

    fast_local_reads: bool = False
    """True when a read is a local call of well under a millisecond (an embedded file):
    the API then reads inline instead of hopping to a thread."""

    def migrate(self) -> None:  # noqa: B027 - optional hook
        """Create or upgrade the schema. Idempotent."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[StoreTx]:
        """Commit on normal exit, roll back on an exception."""

    @abc.abstractmethod
    def resolve(self, identifier: str) -> str | None:
        """Profile id for ``type:value`` or a profile id (following merges); None if unknown."""

    def applied(self, event_uids: Sequence[str]) -> set[str]:
        """Which of these events the profiles processor has applied (committed), read
        without a write transaction: other processors poll it while they wait for the
        profiles processor, and must never hold up its writes. This default opens a
        transaction; backends override it with a plain read."""
        with self.transaction() as tx:
            return tx.applied(event_uids)

    @abc.abstractmethod
    def get_profile(self, profile_id: str) -> Profile | None: ...

    @abc.abstractmethod
    def timeline(
        self, profile_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[TimelineEntry]:
        """Newest first; ``before`` is the (time, event_uid) of the previous page's last entry."""

    @abc.abstractmethod
    def pending_outbox(self, limit: int) -> list[OutboxMessage]: ...

    @abc.abstractmethod
    def delete_outbox(self, ids: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """``profiles`` (live), ``identities``, ``events_applied``, ``merges``."""

    def column_packer(self) -> Callable[[ProfileColumns, float], Any] | None:
        """A picklable function that packs :class:`ProfileColumns` created at a time for
        :meth:`StoreTx.create_packed_profiles`, so that an import packs chunks in another
        process and the writer only writes them; None (the default): the store writes
        columns through :meth:`StoreTx.create_profile_columns`."""
        return None

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every projection (profiles, links, traits, timelines, applied records).

        The event log is the truth: replaying it from the beginning re-derives them.
        """

    @abc.abstractmethod
    def iter_profile_ids(self) -> Iterator[str]:
        """Every live (not merged-away) profile id, in id order."""

    def trait_values(self, names: Sequence[str], page: int = 5000
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every live profile holding at least one of these traits: its id and their values.

        In profile id order; the values as :meth:`StoreTx.traits` reads them (sources,
        times and priorities left out). A scan of the whole population for batch work
        (probabilistic matching reads everyone's name, birth date and address): this
        default reads ``page`` profiles per transaction through :meth:`StoreTx.traits`;
        backends answer it with one set-based query per page, without building a
        :class:`Trait` per value. Pages are not one snapshot: a profile merged away
        meanwhile may still be listed.
        """
        wanted = list(dict.fromkeys(names))
        ids = list(self.iter_profile_ids())
        for start in range(0, len(ids), page):
            part = ids[start:start + page]
            with self.transaction() as tx:
                traits = tx.traits(part)
            for pid in part:
                have = traits.get(pid, {})
                values = {n: have[n].value for n in wanted if n in have}
                if values:
                    yield pid, values

    def changed_profiles(self, since: float) -> list[str]:
        """Ids of every profile, live or merged away, whose ``updated_at`` is after ``since``.

        Creating, appending events, merging, splitting and :meth:`StoreTx.touch`
        set ``updated_at``, so this is the change feed of the warehouse's
        incremental export. Optional; backends that lack it raise NotImplementedError.
        """
        raise NotImplementedError

    def timeline_uids(self, profile_ids: Sequence[str]) -> dict[str, list[str]]:
        """The event uids of each profile's timeline (cheap: no event documents)."""
        out: dict[str, list[str]] = {}
        for pid in profile_ids:
            uids: list[str] = []
            before: tuple[float, str] | None = None
            while True:
                page = self.timeline(pid, 1000, before)
                uids += [e.event_uid for e in page]
                if len(page) < 1000:
                    break
                before = (page[-1].time, page[-1].event_uid)
            out[pid] = uids
        return out

    def timeline_entries(self, profile_id: str, event_uids: Sequence[str]) -> list[TimelineEntry]:
        """These entries of the profile's timeline (those that exist), newest first."""
        wanted = set(event_uids)
        found: list[TimelineEntry] = []
        before: tuple[float, str] | None = None
        while wanted:
            page = self.timeline(profile_id, 1000, before)
            found += [e for e in page if e.event_uid in wanted]
            if len(page) < 1000:
                break
            before = (page[-1].time, page[-1].event_uid)
        return found

    @abc.abstractmethod
    def erase(self, profile_id: str, anonymize: bool = False) -> Erased:
        """Remove one resolved person for good, in one transaction.

        ``profile_id`` is a live profile. Its identity links, traits and the
        outbox messages that name it or a profile merged into it go; so do, unless
        ``anonymize``, its timeline, its merge records and the profile rows
        themselves. With ``anonymize`` the profile row and timeline entries stay
        (type, source, times: counts and trends stay right) but each entry's event
        is replaced by an empty document. Backends overwrite the freed bytes where
        their engine allows it (SQLite's ``secure_delete`` and a WAL truncation),
        so that no copy of the person remains in the files. An unknown or
        merged-away id erases nothing and returns empty lists.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Conflict(Exception):
    """A concurrent transaction won (deadlock, serialization failure); retry the unit of work."""


T = TypeVar("T")


def in_transaction(store: Store, work: Callable[[StoreTx], T], retries: int = 8) -> T:
    """``work`` in one store transaction, run again with a growing pause (5 ms, 10 ms,
    ...) while a concurrent transaction wins (:class:`Conflict`), at most ``retries``
    times more."""
    for attempt in range(retries + 1):
        try:
            with store.transaction() as tx:
                return work(tx)
        except Conflict:
            if attempt == retries:
                raise
            time.sleep(0.005 * (2**attempt))
    raise AssertionError("unreachable")


class StoreUnavailable(Exception):
    """The store cannot be reached (connection refused, restarting); retry later.

    Processors never dead-letter events because of this: the events are not at fault.
    """
