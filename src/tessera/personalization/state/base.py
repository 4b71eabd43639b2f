"""The personalization state contract: computed-trait aggregates, memberships, offer history.

The state is personalization's own projection of the event log, apart from the
profile store: the profiles processor never waits for it, and it can be
rebuilt from the stored timelines (``tessera traits rebuild``). Everything one
batch of events changes (aggregates, the next expiry, memberships, offers, the
record of which events were applied and the ``segment.*`` events to publish)
commits in one :class:`StateTx`, so a redelivered event changes nothing and no
entry or exit event is lost between the state and the bus.

Backends: :mod:`.sqlite` (a file in the data directory, the default) and
:mod:`.postgres` (tables in the store's database, when the store is
PostgreSQL). Both pass ``tests/personalization/state_contract.py``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tessera.store.base import OutboxMessage

TraitStates = dict[str, dict[str, Any]]
"""Computed trait name to its JSON state (see :mod:`tessera.personalization.computed`)."""


@dataclass(frozen=True, slots=True)
class OfferRecord:
    """One presentation or outcome of an action, for caps and cooldowns."""

    profile_id: str
    uid: str
    """The event that reported it (deduplicates)."""
    action: str
    channel: str
    outcome: str
    """``presented``, ``accepted`` or ``declined``."""
    at: float


@dataclass(frozen=True, slots=True)
class SavedAudience:
    """An audience saved through the API (``POST /v1/audiences``), as the state keeps it.

    Saved audiences live in the personalization state, not in ``tessera.yaml``, so that
    every worker of every host (they share the state) picks them up without a restart.
    """

    name: str
    definition: dict[str, Any]
    """The audience as JSON: ``name``, ``description``, ``rule``."""
    digest: str
    """Of the definition: what the workers compare to know whether they evaluated it."""
    created_at: float
    updated_at: float
    evaluated: bool
    """Whether every existing profile has been evaluated against this definition."""


class StateTx(abc.ABC):
    """One atomic unit of work on the state."""

    @abc.abstractmethod
    def applied(self, uids: Sequence[str]) -> set[str]:
        """Which of these events (or timer firings) were applied before."""

    @abc.abstractmethod
    def mark_applied(self, uids: Sequence[str], at: float) -> None: ...

    @abc.abstractmethod
    def lock(self, profile_ids: Sequence[str]) -> None:
        """Serialize writers that touch these profiles (sorted order; no-op for one writer)."""

    @abc.abstractmethod
    def trait_states(self, profile_ids: Iterable[str]) -> dict[str, TraitStates]:
        """Each profile's computed-trait states (profiles without any: an empty dict)."""

    @abc.abstractmethod
    def put_trait_states(self, profile_id: str, states: TraitStates) -> None:
        """Insert or replace these traits' states of the profile."""

    @abc.abstractmethod
    def set_due(self, profile_id: str, due: float | None) -> None:
        """When the profile's next window edge passes (None: never)."""

    @abc.abstractmethod
    def memberships(self, profile_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """Each profile's audiences, with the time it entered each."""

    @abc.abstractmethod
    def enter(self, audience: str, profile_id: str, since: float) -> None: ...

    @abc.abstractmethod
    def leave(self, audience: str, profile_id: str) -> None: ...

    @abc.abstractmethod
    def add_offers(self, records: Sequence[OfferRecord]) -> None:
        """Record presentations and outcomes (a record with a known uid is ignored)."""

    @abc.abstractmethod
    def offers(self, profile_ids: Iterable[str]) -> list[OfferRecord]: ...

    @abc.abstractmethod
    def forget_offers(self, profile_id: str, before: float) -> None:
        """Drop the profile's offer records older than ``before`` (history is bounded)."""

    @abc.abstractmethod
    def move(self, from_id: str, into_id: str) -> None:
        """A merge: move offer records to ``into_id``; drop ``from_id``'s traits, due time
        and memberships (the caller has combined the traits and emitted the exits)."""

    @abc.abstractmethod
    def drop(self, profile_ids: Sequence[str]) -> None:
        """Forget everything about these profiles (a rebuild of what no longer exists)."""

    @abc.abstractmethod
    def add_outbox(self, messages: Sequence[tuple[str, str, str, bytes]]) -> None:
        """Queue ``(topic, message_id, key, payload)`` for the bus, atomically with the rest."""


class State(abc.ABC):
    """The state, readable from any process (the API reads it, the worker writes it)."""

    def migrate(self) -> None:  # noqa: B027 - optional hook
        """Create the tables. Idempotent."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[StateTx]:
        """Commit on normal exit, roll back on an exception."""

    def reading(self) -> AbstractContextManager[StateTx]:
        """A transaction for reads only (SQLite refuses a write in it; here it is just a
        transaction). A backend may make it a snapshot that neither waits for a writer nor
        holds one back (SQLite: no write lock); batch evaluation reads each chunk so, and
        again in a writing transaction."""
        return self.transaction()

    @abc.abstractmethod
    def due(self, now: float, limit: int) -> list[str]:
        """Profiles whose next window edge is at or before ``now``, earliest first."""

    @abc.abstractmethod
    def trait_states_of(self, profile_id: str) -> TraitStates: ...

    @abc.abstractmethod
    def memberships_of(self, profile_id: str) -> dict[str, float]: ...

    @abc.abstractmethod
    def offers_of(self, profile_id: str) -> list[OfferRecord]: ...

    @abc.abstractmethod
    def members(self, audience: str, after: str | None, limit: int) -> list[tuple[str, float]]:
        """(profile id, since) of an audience's members in profile id order, after ``after``."""

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """How many members each audience has (audiences without members are absent)."""

    @abc.abstractmethod
    def profile_ids(self) -> list[str]:
        """Every profile the state knows anything about (for rebuilds)."""

    @abc.abstractmethod
    def pending_outbox(self, limit: int) -> list[OutboxMessage]: ...

    @abc.abstractmethod
    def delete_outbox(self, ids: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop everything but the outbox and the saved audiences (a full rebuild follows)."""

    # -- saved audiences (configuration kept in the state, not derived from events) ----------

    @abc.abstractmethod
    def saved_audiences(self) -> list[SavedAudience]:
        """Every saved audience, by name."""

    @abc.abstractmethod
    def save_audience(self, name: str, definition: dict[str, Any], digest: str,
                      at: float) -> bool:
        """Create or replace a saved audience; True if it was created. A replacement keeps
        ``created_at`` and is no longer ``evaluated`` unless its digest is unchanged."""

    @abc.abstractmethod
    def delete_audience(self, name: str) -> bool:
        """Forget a saved audience (not its memberships: the processor exits them); False if
        there was none of that name."""

    @abc.abstractmethod
    def mark_evaluated(self, name: str, digest: str) -> None:
        """Every profile was evaluated against this definition (a replaced one is not)."""

    @abc.abstractmethod
    def audiences_version(self) -> tuple[int, float, int]:
        """Changes whenever a saved audience is created, replaced, deleted or marked
        evaluated (cheap: the processor asks every second, the API on every read)."""

    def erasing(self) -> AbstractContextManager[None]:
        """Around the deletions of an erasure: the backend makes deleted rows unrecoverable
        from its files where it can (SQLite: ``secure_delete`` and a WAL truncation)."""
        return contextlib.nullcontext()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
