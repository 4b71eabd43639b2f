"""The journey state contract: per-profile journey instances, durable timers, step
metrics, the ids of handled events and an outbox.

Everything one event or one timer changes commits in one :class:`JourneyTx`,
so handling an event twice, or a timer after a crash, changes nothing the
second time. With several engines on one state (activation workers on several
hosts, PostgreSQL), a transaction also serializes what it touches:

- :meth:`JourneyTx.lock` takes the profiles an event batch touches, in sorted
  order, before anything is read, so two engines never interleave transitions
  of one instance, and a redelivered event handled by a second engine finds
  itself applied;
- :meth:`JourneyTx.claim_due` takes due timers that no other transaction has
  taken (``FOR UPDATE SKIP LOCKED``), and :meth:`JourneyTx.try_lock` takes a
  timer's profile without waiting (a profile busy with an event is fired on a
  later tick), so no timer fires twice and a timer never waits for a lock while
  holding one (no deadlock with event transactions).

Backends: :mod:`.sqlite` (``activation.db`` in the data directory; one writer at
a time, so the locks are no-ops) and :mod:`.postgres` (``jrn_*`` tables beside
the store). Both pass ``tests/contract/journey_state_contract.py``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Instance:
    id: str
    journey: str
    profile_id: str
    slot: str
    step: str
    entered_at: float
    status: str = "active"
    waiting: str | None = None
    updated_at: float = 0.0
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outboxed:
    id: int
    topic: str
    msg_id: str
    key: str
    payload: bytes

    @property
    def message_id(self) -> str:
        return self.msg_id


@dataclass(slots=True)
class StepMetrics:
    journey: str
    step: str
    entered: int = 0
    completed: int = 0
    exited: int = 0
    waiting: int = 0


class JourneyTx(abc.ABC):
    """One atomic unit of work on the journey state."""

    @abc.abstractmethod
    def lock(self, profile_ids: Sequence[str]) -> None:
        """Wait for and hold these profiles until the end of the transaction (taken in
        sorted order, so two transactions never wait for each other in a cycle)."""

    @abc.abstractmethod
    def try_lock(self, profile_id: str) -> bool:
        """Take one profile if no other transaction holds it; False (without waiting) if not."""

    @abc.abstractmethod
    def claim_due(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        """``(instance_id, step, fire_at)`` of due timers, earliest first, held by this
        transaction; timers another transaction holds are left out, not waited for."""

    @abc.abstractmethod
    def applied(self, uid: str) -> bool: ...

    @abc.abstractmethod
    def mark_applied(self, uids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def active(self, journey: str, profile_id: str) -> list[Instance]: ...

    @abc.abstractmethod
    def get(self, instance_id: str) -> Instance | None: ...

    @abc.abstractmethod
    def insert(self, instance: Instance) -> bool:
        """False if the instance exists, or the profile is already active in the slot."""

    @abc.abstractmethod
    def save(self, instance: Instance) -> None: ...

    @abc.abstractmethod
    def set_timer(self, instance_id: str, step: str, fire_at: float) -> None: ...

    @abc.abstractmethod
    def take_timer(self, instance_id: str, step: str) -> bool:
        """Remove a timer; False if it was already gone (fired, or the instance moved on)."""

    @abc.abstractmethod
    def clear_timers(self, instance_id: str) -> None: ...

    @abc.abstractmethod
    def count(self, journey: str, step: str, what: str) -> None:
        """Add one to ``entered``, ``completed`` or ``exited`` of a step."""

    @abc.abstractmethod
    def add_outbox(self, topic: str, msg_id: str, key: str, payload: bytes) -> None: ...


class JourneyState(abc.ABC):
    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[JourneyTx]: ...

    def migrate(self) -> None:  # noqa: B027 - SQLite creates its tables on open
        """Create or upgrade the tables (idempotent; safe from many processes)."""

    @abc.abstractmethod
    def due_timers(self, now: float, limit: int) -> list[tuple[str, str, float]]:
        """``(instance_id, step, fire_at)`` of timers due at ``now``, earliest first
        (a look without taking them: see :meth:`JourneyTx.claim_due`)."""

    @abc.abstractmethod
    def next_timer_at(self) -> float | None: ...

    @abc.abstractmethod
    def pending_outbox(self, limit: int) -> list[Outboxed]: ...

    @abc.abstractmethod
    def delete_outbox(self, ids: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def metrics(self) -> list[StepMetrics]: ...

    @abc.abstractmethod
    def instances(self, profile_id: str) -> list[Instance]: ...

    def erase(self, profile_ids: Sequence[str], match: Callable[[bytes], bool]) -> int:
        """Remove the journey instances (and their timers) of these profiles and the
        queued events whose payload ``match``es, for data subject erasure; how many rows."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


