"""Identity resolution: attach an event to a profile, creating or merging as needed.

Identifiers are considered in priority order (as Segment Unify does). Each
identifier either is new, or points at a profile. A profile joins the match
only if the combined profile would stay within every identifier type's limit;
otherwise that identifier is left out of the match. So with ``member_number``
limited to one per profile, two members who share a family email never merge,
and the event goes with the member number, its highest-priority identifier.

The resolver works on a :class:`Graph`: the part of the identity graph one
batch of events touches, read from the store once and written through.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tessera.config import TesseraConfig
from tessera.store.base import Identifier


@dataclass(slots=True)
class Resolution:
    profile_id: str
    created: bool = False
    linked: list[Identifier] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    """Profiles merged into ``profile_id`` by this event."""
    dropped: list[Identifier] = field(default_factory=list)
    """Identifiers of the event left out because they would break a limit."""


class Graph(Protocol):
    """What the resolver needs of the identity graph."""

    def owner(self, identifier: Identifier) -> str | None: ...

    def members(self, profile_ids: Iterable[str]) -> dict[str, set[Identifier]]: ...

    def create(
        self, profile_id: str, identifiers: Sequence[Identifier], event_uid: str, source: str
    ) -> None: ...

    def link(
        self, profile_id: str, identifiers: Sequence[Identifier], event_uid: str, source: str
    ) -> None: ...

    def merge(self, into: str, merged: Sequence[str], event_uid: str) -> None: ...


def new_profile_id() -> str:
    """``prf_`` and 32 hex digits: the creation time in milliseconds (12 digits) and 80
    random bits (20), the layout of a UUIDv7. Ids made later sort later, so a new profile
    goes to the right edge of every index keyed by profile id (profiles, traits, the
    timeline's, the identities') instead of to a random page of each."""
    return f"prf_{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def new_profile_ids(n: int) -> list[str]:
    """``n`` ids of :func:`new_profile_id`'s layout made at once, rising: the clock, 40
    random bits shared by the ``n`` and a 40-bit counter in place of the 80 random bits."""
    head = f"prf_{time.time_ns() // 1_000_000:012x}{os.urandom(5).hex()}"
    return [f"{head}{i:010x}" for i in range(n)]


class IdentityResolver:
    def __init__(self, config: TesseraConfig) -> None:
        idents = config.all_identifiers()
        self._limit = {i.type: i.limit for i in idents}
        self._priority = {i.type: i.priority for i in idents}

    def priorities(self) -> dict[str, int]:
        """The priority of each configured identifier type (others sort as 1000)."""
        return dict(self._priority)

    def sort(self, identifiers: Sequence[Identifier]) -> list[Identifier]:
        return sorted(identifiers, key=lambda i: self._priority.get(i[0], 1000))

    def _fits(self, have: dict[str, set[str]], adding: Iterable[Identifier]) -> bool:
        extra: dict[str, set[str]] = {}
        for type_, value in adding:
            extra.setdefault(type_, set()).add(value)
        for type_, values in extra.items():
            limit = self._limit.get(type_, 0)
            if limit and len(have.get(type_, set()) | values) > limit:
                return False
        return True

    def expand_previous_id(
        self, graph: Graph, identifiers: Sequence[Identifier]
    ) -> list[Identifier]:
        """An alias's ``previousId`` is whichever of user_id / anonymous_id already exists."""
        out: list[Identifier] = []
        for type_, value in identifiers:
            if type_ != "previous_id":
                out.append((type_, value))
                continue
            if graph.owner(("user_id", value)) is not None:
                out.append(("user_id", value))
            else:
                out.append(("anonymous_id", value))
        return out

    def resolve(
        self, graph: Graph, identifiers: Sequence[Identifier], event_uid: str, source: str
    ) -> Resolution | None:
        """Find or make the event's profile. None when the event has no usable identifier."""
        idents = self.sort(list(dict.fromkeys(self.expand_previous_id(graph, identifiers))))
        if not idents:
            return None
        found = {i: pid for i in idents if (pid := graph.owner(i)) is not None}
        pids = set(found.values())
        new = [i for i in idents if i not in found]
        needs_graph = len(pids) > 1 or any(self._limit.get(i[0], 0) for i in new)
        members = graph.members(pids) if needs_graph else {}

        if not needs_graph:  # the common case: nothing can break a limit
            if not pids:
                pid = new_profile_id()
                graph.create(pid, idents, event_uid, source)
                return Resolution(pid, created=True, linked=idents)
            (pid,) = pids
            if new:
                graph.link(pid, new, event_uid, source)
            return Resolution(pid, linked=new)

        have: dict[str, set[str]] = {}
        targets: list[str] = []
        kept_new: list[Identifier] = []
        dropped: list[Identifier] = []
        for ident in idents:
            owner = found.get(ident)
            if owner is None:
                if self._fits(have, [ident]):
                    have.setdefault(ident[0], set()).add(ident[1])
                    kept_new.append(ident)
                else:
                    dropped.append(ident)
            elif owner in targets:
                continue
            else:
                theirs = members.get(owner) or {ident}
                if self._fits(have, theirs):
                    targets.append(owner)
                    for type_, value in theirs:
                        have.setdefault(type_, set()).add(value)
                else:
                    dropped.append(ident)

        if not targets:
            pid = new_profile_id()
            graph.create(pid, kept_new, event_uid, source)
            return Resolution(pid, created=True, linked=kept_new, dropped=dropped)
        survivor, merged = targets[0], targets[1:]
        if merged:
            graph.merge(survivor, merged, event_uid)
        if kept_new:
            graph.link(survivor, kept_new, event_uid, source)
        return Resolution(survivor, linked=kept_new, merged=merged, dropped=dropped)
