"""The bus contract every backend implements.

A bus is a set of append-only topics. Publishing returns only once the
messages are durable, and deduplicates by message id. Consumers belong to a
named group; each group sees every message of a topic at least once, in order
per partition key, and acknowledges what it has processed. A message that keeps
failing is moved to the dead letters with its error, so it never blocks the
messages behind it, and can be replayed after a fix.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class BusUnavailable(Exception):
    """The bus cannot take or give messages right now; callers should retry later."""


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    """Deduplication id: a message with an id the topic already holds is not stored again."""
    key: str
    """Partition key: messages with the same key are delivered in order."""
    payload: bytes


@dataclass(slots=True)
class Delivery:
    topic: str
    group: str
    seq: int
    """The message's position in its topic (or stream)."""
    id: str
    key: str
    payload: bytes
    attempts: int = 1
    """How many times this message has been delivered to the group, this one included."""
    handle: Any = field(default=None, repr=False, compare=False)
    """Backend-specific acknowledgement handle."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    group: str
    topic: str
    seq: int
    message_id: str
    key: str
    payload: bytes
    error: str
    attempts: int
    failed_at: float
    replayed_at: float | None = None


class Bus(abc.ABC):
    """Topics of durable, deduplicated messages with consumer groups."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and create what is missing. Called once before use."""

    @abc.abstractmethod
    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        """Append durably; for each message, True if stored, False if a duplicate id.

        Raises :class:`BusUnavailable` when the messages could not be made durable.
        """

    @abc.abstractmethod
    async def fetch(
        self, topic: str, group: str, max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` for ``group``, waiting at most ``timeout`` seconds for one."""

    @abc.abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Mark deliveries processed: the group will not see them again."""

    @abc.abstractmethod
    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        """Deliver these again to the group after ``delay`` seconds."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        """Move a delivery to the dead letters with its error, and acknowledge it."""

    @abc.abstractmethod
    async def dead_letters(
        self, group: str | None = None, include_replayed: bool = False
    ) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def replay_dead_letter(self, dead_letter_id: int) -> bool:
        """Publish a dead letter's message again for its group; False if unknown or replayed."""

    @abc.abstractmethod
    async def lag(self, topic: str, group: str) -> int:
        """How many messages of ``topic`` the group has not acknowledged yet."""

    @abc.abstractmethod
    async def reset(self, topic: str, group: str, from_time: float) -> None:
        """Rewind ``group`` so that it receives again every message appended since ``from_time``."""

    async def erase(self, topics: Sequence[str], match: Callable[[bytes], bool]) -> int:
        """Delete for good every message of ``topics``, and every dead letter of any topic,
        whose payload ``match``es; how many went.

        For data subject erasure: the bus keeps events for replay, so it holds
        personal data too. Consumer positions are unaffected; a deleted message a
        group had not reached yet is never delivered. It reads every retained
        message, so it costs a scan of the log: it is meant for rare requests.
        Backends overwrite the deleted bytes where their engine allows it.
        """
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending publishes complete first."""
