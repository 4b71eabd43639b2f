"""Identity resolution: attach an event to a profile, creating or merging as needed.

Identifiers are considered in priority order (as Segment Unify does). Each
identifier either is new, or points at a profile. A profile joins the match
only if the combined profile would stay within every identifier type's limit;
otherwise that identifier is left out of the match. So with ``member_number``
limited to one per profile, two members who share a family email never merge,
and the event goes with the member number, its highest-priority identifier.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from tessera.config import TesseraConfig
from tessera.store.base import Identifier, StoreTx

MAX_LOCK_ROUNDS = 8


@dataclass(slots=True)
class Resolution:
    profile_id: str
    created: bool = False
    linked: list[Identifier] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    """Profiles merged into ``profile_id`` by this event."""
    dropped: list[Identifier] = field(default_factory=list)
    """Identifiers of the event left out because they would break a limit."""


def new_profile_id() -> str:
    return "prf_" + uuid.uuid4().hex


class IdentityResolver:
    def __init__(self, config: TesseraConfig) -> None:
        idents = config.all_identifiers()
        self._limit = {i.type: i.limit for i in idents}
        self._priority = {i.type: i.priority for i in idents}

    def sort(self, identifiers: Sequence[Identifier]) -> list[Identifier]:
        return sorted(identifiers, key=lambda i: self._priority.get(i[0], 1000))

    def _fits(self, have: dict[str, set[str]], adding: Sequence[Identifier]) -> bool:
        extra: dict[str, set[str]] = {}
        for type_, value in adding:
            extra.setdefault(type_, set()).add(value)
        for type_, values in extra.items():
            limit = self._limit.get(type_, 0)
            if limit and len(have.get(type_, set()) | values) > limit:
                return False
        return True

    def _needs_graph(self, identifiers: Sequence[Identifier], found: dict[Identifier, str]) -> bool:
        """Whether limits must be checked against the profiles' stored identifiers."""
        pids = set(found.values())
        if len(pids) > 1:
            return True
        return any(self._limit.get(i[0], 0) for i in identifiers if i not in found)

    def resolve(
        self, tx: StoreTx, identifiers: Sequence[Identifier], event_uid: str, at: float, source: str
    ) -> Resolution | None:
        """Find or make the event's profile. None when the event has no usable identifier."""
        idents = self._expand_previous_id(tx, identifiers)
        idents = self.sort(list(dict.fromkeys(idents)))
        if not idents:
            return None
        tx.lock_identifiers(idents)
        found = tx.lookup(idents)
        if not tx.single_writer:
            for _ in range(MAX_LOCK_ROUNDS):
                pids = sorted(set(found.values()))
                tx.lock_profiles(pids)
                again = tx.lookup(idents)
                if again == found:
                    break
                found = again
        graph: dict[str, list[Identifier]] = {}
        if self._needs_graph(idents, found):
            graph = tx.identifiers_of(set(found.values()))

        have: dict[str, set[str]] = {}
        targets: list[str] = []
        kept_new: list[Identifier] = []
        dropped: list[Identifier] = []
        for ident in idents:
            pid = found.get(ident)
            if pid is None:
                if self._fits(have, [ident]):
                    have.setdefault(ident[0], set()).add(ident[1])
                    kept_new.append(ident)
                else:
                    dropped.append(ident)
            elif pid in targets:
                continue
            else:
                theirs = graph.get(pid, [ident])
                if self._fits(have, theirs):
                    targets.append(pid)
                    for type_, value in theirs:
                        have.setdefault(type_, set()).add(value)
                else:
                    dropped.append(ident)

        if not targets:
            pid = new_profile_id()
            tx.create_profile(pid, at)
            tx.link(pid, kept_new, event_uid, at, source)
            return Resolution(pid, created=True, linked=kept_new, dropped=dropped)
        survivor, merged = targets[0], targets[1:]
        if merged:
            tx.merge(survivor, merged, event_uid, at, "deterministic")
        if kept_new:
            tx.link(survivor, kept_new, event_uid, at, source)
        return Resolution(survivor, linked=kept_new, merged=merged, dropped=dropped)

    @staticmethod
    def _expand_previous_id(tx: StoreTx, identifiers: Sequence[Identifier]) -> list[Identifier]:
        """An alias's ``previousId`` is whichever of user_id / anonymous_id already exists."""
        out: list[Identifier] = []
        for type_, value in identifiers:
            if type_ != "previous_id":
                out.append((type_, value))
                continue
            candidates = [("user_id", value), ("anonymous_id", value)]
            known = tx.lookup(candidates)
            out.append(next((c for c in candidates if c in known), ("anonymous_id", value)))
        return out
