"""The trust records contract: managed API keys, the suppression list and the audit log.

These three are small, rarely written and read by every API process, so they
share one port. Nothing here holds personal data in the clear: keys are kept
as SHA-256 digests (a key is a high-entropy token, so an unsalted digest is
enough and makes lookup a primary-key read), suppressed identifiers as digests
too, and audit entries name profiles and keys, never identifiers or traits.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

KeyKind = Literal["write", "api"]


@dataclass(frozen=True, slots=True)
class ManagedKey:
    id: str
    """Public identifier (``key_...``), used to rotate or revoke; not a secret."""
    kind: KeyKind
    digest: str
    """SHA-256 (hex) of the whole key; the key itself is never stored."""
    prefix: str
    """The first characters of the key, shown so that people can tell keys apart."""
    source: str | None = None
    """For a write key: the source it ingests for."""
    scopes: frozenset[str] = frozenset()
    """For an API key: ``profiles:read``, ``segments:read``, ``decisions:read``, ``admin``."""
    name: str = ""
    created_at: float = 0.0
    revoked_at: float | None = None
    rate_per_second: float | None = None
    """This key's own request rate limit (None: the configured default)."""
    replaces: str | None = None
    """The id of the key this one rotated."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: str
    """``keys.create``, ``privacy.erasure``, ``http.POST /v1/subscriptions`` ..."""
    actor: str
    """Who: a key id or configured key's prefix, or ``cli``."""
    at: float
    target: str = ""
    """What it acted on, without personal data (a profile id, a key id, a path)."""
    outcome: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)
    id: int = 0


@dataclass(frozen=True, slots=True)
class DataKey:
    """An encryption key id that has encrypted stored data (the key itself is never stored)."""

    id: str
    check: str
    """An encryption of a constant under the key: tells a wrong key at start."""
    created_at: float
    retired_at: float | None = None
    """Set when a finished rotation left no data encrypted with it."""


class TrustRecords(abc.ABC):
    """Keys, suppressions and audit entries, shared by every process of one installation."""

    def migrate(self) -> None:  # noqa: B027 - optional hook
        """Create the tables. Idempotent."""

    # -- keys
    @abc.abstractmethod
    def add_key(self, key: ManagedKey) -> None:
        """Store a new key; ValueError if its id or digest exists."""

    @abc.abstractmethod
    def key_by_digest(self, digest: str) -> ManagedKey | None:
        """The key with this digest, revoked or not."""

    @abc.abstractmethod
    def get_key(self, key_id: str) -> ManagedKey | None: ...

    @abc.abstractmethod
    def list_keys(self, include_revoked: bool = False) -> list[ManagedKey]:
        """Oldest first."""

    @abc.abstractmethod
    def revoke_key(self, key_id: str, at: float) -> bool:
        """Revoke an active key; False if unknown or already revoked."""

    # -- suppression
    @abc.abstractmethod
    def suppress(self, digests: Sequence[str], at: float) -> None:
        """Add identifier digests to the suppression list (existing ones are kept)."""

    @abc.abstractmethod
    def suppressed(self) -> set[str]:
        """Every suppressed identifier digest."""

    @abc.abstractmethod
    def suppression_version(self) -> int:
        """Changes whenever the list grows: caches compare it instead of re-reading the list."""

    # -- audit
    @abc.abstractmethod
    def audit(self, entry: AuditEntry) -> int:
        """Append an entry; its id."""

    @abc.abstractmethod
    def audit_entries(
        self, limit: int = 100, before: int | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        """Newest first; ``before`` is an entry id (paging); ``action`` a prefix filter."""

    # -- encryption keys in use, and progress of long operations
    @abc.abstractmethod
    def data_keys(self) -> list[DataKey]:
        """Every encryption key id that was registered, retired or not, oldest first."""

    @abc.abstractmethod
    def add_data_key(self, key_id: str, check: str, at: float) -> None:
        """Register a key id before anything is encrypted with it (an existing id is kept)."""

    @abc.abstractmethod
    def retire_data_keys(self, key_ids: Sequence[str], at: float) -> None:
        """Mark key ids as no longer holding any stored data."""

    @abc.abstractmethod
    def unretire_data_key(self, key_id: str) -> None:
        """A process encrypts with this key id again."""

    @abc.abstractmethod
    def get_state(self, name: str) -> str | None:
        """A small named value (a resumable operation's cursor); None if unset."""

    @abc.abstractmethod
    def set_state(self, name: str, value: str | None) -> None:
        """Set or (with None) clear a named value."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
