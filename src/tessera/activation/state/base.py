"""The activation state contract: subscriptions created through the API, pause flags,
delivery counters.

Every process of an installation must see the same state: a subscription
created through ``POST /v1/subscriptions`` on one API node is run by the
activation workers on every host, and a pause set by the CLI stops them all.
So the state lives beside the store: ``activation.db`` in the data directory
for the embedded store (:mod:`.sqlite`), tables in the store's PostgreSQL
database for the scale-out (:mod:`.postgres`). Both pass
``tests/contract/activation_state_contract.py``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from tessera.activation.model import SubscriptionConfig


class SubscriptionExists(Exception):
    pass


@dataclass(slots=True)
class SubscriptionState:
    name: str
    origin: str
    """``api``, ``config`` or ``journey``."""
    definition: dict[str, Any] | None
    """The subscription as JSON (for API ones the truth; for others as last seen)."""
    created_at: float
    initialized: bool
    """Whether its consumer groups were positioned where it starts."""
    paused: bool
    delivered: int
    failed_attempts: int
    dead_lettered: int
    filtered_out: int
    in_flight: int
    last_error: str | None
    last_error_at: float | None
    last_success_at: float | None


class ActivationState(abc.ABC):
    """What the API, the CLI, the console and the activation processor share."""

    def migrate(self) -> None:  # noqa: B027 - SQLite creates its tables on open
        """Create or upgrade the tables (idempotent; safe from many processes)."""

    @abc.abstractmethod
    def create(self, sub: SubscriptionConfig, origin: str = "api", initialized: bool = False,
               created_at: float | None = None) -> SubscriptionState:
        """Record a new subscription; :class:`SubscriptionExists` if the name is taken
        (a deleted one's name may be taken again: it starts afresh, counters at zero)."""

    @abc.abstractmethod
    def ensure(self, sub: SubscriptionConfig, origin: str) -> SubscriptionState:
        """Config and journey subscriptions: record them the first time they are seen,
        update their definition afterwards (counters and flags are kept)."""

    @abc.abstractmethod
    def delete(self, name: str) -> bool:
        """Delete an API subscription; False if there is none of that name."""

    @abc.abstractmethod
    def get(self, name: str) -> SubscriptionState | None: ...

    @abc.abstractmethod
    def all(self) -> list[SubscriptionState]:
        """Every subscription not deleted, by name."""

    @abc.abstractmethod
    def api_subscriptions(self) -> list[SubscriptionConfig]:
        """The subscriptions created through the API (not deleted), by name."""

    @abc.abstractmethod
    def version(self) -> tuple[int, int]:
        """Changes when API subscriptions are added or removed."""

    @abc.abstractmethod
    def mark_initialized(self, name: str) -> None: ...

    @abc.abstractmethod
    def set_paused(self, name: str, paused: bool) -> bool:
        """False if no such subscription has been recorded (a worker records config ones)."""

    @abc.abstractmethod
    def paused(self) -> set[str]: ...

    @abc.abstractmethod
    def add_stats(self, name: str, delivered: int, failed_attempts: int, dead_lettered: int,
                  filtered_out: int, in_flight: int, last_error: str | None,
                  last_error_at: float | None, last_success_at: float | None) -> None:
        """Add to the counters (several workers add concurrently; nothing is lost);
        ``in_flight`` is replaced, the ``last_*`` fields only when given."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
