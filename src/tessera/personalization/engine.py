"""The personalization domain logic: events in, aggregates and memberships out.

:class:`Personalizer` works on two ports only, the profile store (read: a
profile's traits and identifiers) and the personalization state (read and
written). It handles three kinds of change, each in one state transaction:

* **events** of known profiles: computed traits take their contributions,
  offer outcomes go to the offer history, and every touched profile's
  audiences are evaluated again (its traits may have changed too);
* **merges** (``identity.merged``): the merged profiles' aggregates combine
  into the survivor's, their offer history moves, they leave their audiences
  (``segment.exited``, reason ``merged``) and the survivor is evaluated again;
* **window edges**: a profile whose oldest bucket leaves a window is due; its
  aggregates are pruned and its audiences evaluated again, so a member leaves
  when the last qualifying event ages out, with no event arriving.

A change of membership becomes a ``segment.entered`` / ``segment.exited``
event in the state's outbox, published to the ``derived`` topic after commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Protocol

from tessera.events.envelope import Event
from tessera.personalization.computed import ComputedTraits, TraitState
from tessera.personalization.consent import TraitConsent
from tessera.personalization.model import AudienceConfig, PersonalizationConfig
from tessera.personalization.rules import (
    Compiled,
    Facts,
    audience_order,
    compiled,
    memberships,
)
from tessera.personalization.state.base import OfferRecord, State, StateTx, TraitStates
from tessera.personalization.state.outbox import (
    ENTERED,
    EXITED,
    OutboxRow,
    compact,
    packed,
)
from tessera.store.base import Profile, Store


class Memberships(Protocol):
    """Where :meth:`Personalizer.follow` enters and leaves: a state transaction, or a
    plan of the changes to write later (batch evaluation)."""

    def enter(self, audience: str, profile_id: str, since: float) -> None: ...

    def leave(self, audience: str, profile_id: str) -> None: ...


@dataclass(slots=True)
class Cause:
    """What made a profile's memberships be evaluated again (it goes into the events)."""

    uid: str
    reason: str
    """``event``, ``merged``, ``unmerged``, ``erased``, ``window``, ``batch``, ``rebuild``,
    ``saved`` (a saved audience filled in) or ``deleted`` (its audience was deleted)."""
    type: str | None = None
    received_at: float | None = None


@dataclass(slots=True)
class Outcome:
    applied: int = 0
    skipped: int = 0
    entered: int = 0
    exited: int = 0
    events: list[OutboxRow] = field(default_factory=list)
    """The ``segment.entered`` / ``segment.exited`` events, serialized for the outbox."""


def profile_facts(profile: Profile | None, pid: str) -> tuple[dict[str, Any],
                                                            dict[str, list[str]]]:
    """(trait values, identifiers by type) of a stored profile."""
    if profile is None:
        return {}, {}
    identifiers: dict[str, list[str]] = {}
    for link in profile.identities:
        identifiers.setdefault(link.type, []).append(link.value)
    return {n: t.value for n, t in profile.traits.items()}, identifiers


class Personalizer:
    def __init__(self, config: PersonalizationConfig, store: Store, state: State,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.state = state
        self.clock = clock
        self.computed = ComputedTraits(config.all_computed())
        self.audiences: list[AudienceConfig] = []
        self.rules: list[Compiled] = []
        self._names: set[str] = set()
        self.set_audiences(config.audiences)
        self.consent = TraitConsent(config.consent_trait_prefix)
        self._outcomes = [(name, getattr(config.outcomes, name))
                          for name in ("presented", "accepted", "declined")]

    def set_audiences(self, audiences: Sequence[AudienceConfig]) -> None:
        """Evaluate these audiences from now on: the configured ones and the saved ones
        (:func:`tessera.personalization.audiences.usable`), which change while it runs."""
        self.audiences = audience_order(audiences)
        self.rules = [compiled(a.rule) for a in self.audiences]
        self._names = {a.name for a in self.audiences}

    @property
    def audience_names(self) -> set[str]:
        return set(self._names)

    # -- facts --------------------------------------------------------------------

    def read_profiles(self, pids: Sequence[str]
                      ) -> dict[str, tuple[dict[str, Any], dict[str, list[str]]]]:
        """(trait values, identifiers) of many profiles in two reads (batch evaluation).

        The store contract offers bulk reads inside a transaction only; the transaction
        writes nothing (in SQLite it holds the write lock for the two reads).
        """
        with self.store.transaction() as stx:
            traits = stx.traits(pids)
            links = stx.identifiers_of(pids)
        out = {}
        for pid in pids:
            identifiers: dict[str, list[str]] = {}
            for type_, value in links.get(pid, []):
                identifiers.setdefault(type_, []).append(value)
            out[pid] = ({n: t.value for n, t in traits.get(pid, {}).items()}, identifiers)
        return out

    def facts(self, pid: str, profile: Profile | None, states: TraitStates, now: float) -> Facts:
        traits, identifiers = profile_facts(profile, pid)
        return Facts(profile_id=pid, traits=traits, computed=self.computed.values(states, now),
                     identifiers=identifiers, consent=self.consent.for_profile(traits))

    def outcome_of(self, event: Event, pid: str) -> OfferRecord | None:
        """The offer record an outcome event reports, or None if it is no outcome."""
        for outcome, patterns in self._outcomes:
            if any(fnmatchcase(event.type, p) for p in patterns):
                data = event.data if isinstance(event.data, dict) else {}
                action = data.get("action")
                if not isinstance(action, str) or not action:
                    return None
                channel = data.get("channel")
                return OfferRecord(pid, event.uid, action,
                                   channel if isinstance(channel, str) and channel else "unknown",
                                   outcome, event.time)
        return None

    # -- events ---------------------------------------------------------------------

    def apply(self, events: Sequence[tuple[Event, str | None]]) -> Outcome:
        """Apply events, each with the profile it belongs to (None: unattributed)."""
        result = Outcome()
        now = self.clock()
        with self.state.transaction() as tx:
            fresh = [(e, p) for e, p in events if p is not None]
            done = tx.applied([e.uid for e, _ in fresh]) if fresh else set()
            todo = [(e, p) for e, p in fresh if e.uid not in done]
            result.skipped = len(events) - len(todo)
            pids = sorted({p for _, p in todo})
            tx.lock(pids)
            states = tx.trait_states(pids)
            members = tx.memberships(pids)
            by_pid: dict[str, list[Event]] = {p: [] for p in pids}
            for event, pid in todo:
                by_pid[pid].append(event)
            offers: list[OfferRecord] = []
            for pid in pids:
                changed: set[str] = set()
                known = profile_facts(self.store.get_profile(pid), pid) if self.audiences \
                    else None
                for index, event in enumerate(by_pid[pid]):
                    contributed = False
                    for trait, value in self.computed.contributions(event):
                        states[pid][trait.name] = trait.add(states[pid].get(trait.name),
                                                            event.time, value, now)
                        changed.add(trait.name)
                        contributed = True
                    record = self.outcome_of(event, pid)
                    if record is not None:
                        offers.append(record)
                    # after the profile's first event (its plain traits, as the profiles
                    # processor left them) and after every event that moved a computed
                    # trait: an entry or exit names the event that caused it
                    if index == 0 or contributed:
                        cause = Cause(event.uid, "event", event.type, event.received_at)
                        self.evaluate(tx, pid, states[pid], members[pid], cause, now, result,
                                      known)
                self._save(tx, pid, states[pid], changed, now)
            if offers:
                tx.add_offers(offers)
                horizon = now - self.config.offer_history_days * 86400.0
                for pid in {r.profile_id for r in offers}:
                    tx.forget_offers(pid, horizon)
            tx.mark_applied([e.uid for e, _ in todo], now)
            self.queue(tx, result)
        result.applied = len(todo)
        return result

    def _save(self, tx: StateTx, pid: str, states: TraitStates, names: set[str],
              now: float) -> None:
        for name, trait in self.computed.traits.items():
            state = states.get(name)
            if state is not None and trait.prune(state, now):
                names.add(name)
        if names:
            tx.put_trait_states(pid, {n: states[n] for n in names})
            tx.set_due(pid, self.computed.next_expiry(states))

    # -- memberships ----------------------------------------------------------------

    def evaluate(self, tx: StateTx, pid: str, states: TraitStates, current: dict[str, float],
                  cause: Cause, now: float, result: Outcome,
                  known: tuple[dict[str, Any], dict[str, list[str]]] | None = None,
                  only: set[str] | None = None) -> None:
        """Evaluate every audience for one profile; enter and leave as the result says
        (``current``, the profile's memberships, follows).

        ``known`` is the profile's (trait values, identifiers) when the caller read them
        in bulk (batch evaluation); otherwise the profile is read from the store.
        ``only`` limits the changes to these audiences (a saved audience being filled in
        and those that refer to it). Memberships of audiences this engine does not know
        are left alone: one saved a moment ago on another worker is not undone here, and
        one deleted makes its members exit through the processor (reason ``deleted``).
        """
        if not self.audiences:
            return
        self.follow(tx, pid, self.wanted(pid, states, now, known), current, cause, now, result,
                    only)

    def wanted(self, pid: str, states: TraitStates, now: float,
               known: tuple[dict[str, Any], dict[str, list[str]]] | None = None) -> set[str]:
        """The audiences one profile belongs in now (no state read or written: batch
        evaluation computes this outside the state's write lock)."""
        if not self.audiences:
            return set()
        if known is None:
            facts = self.facts(pid, self.store.get_profile(pid), states, now)
        else:
            traits, identifiers = known
            facts = Facts(profile_id=pid, traits=traits,
                          computed=self.computed.values(states, now), identifiers=identifiers,
                          consent=self.consent.for_profile(traits))
        return memberships(self.audiences, facts, self.rules)

    def follow(self, tx: Memberships, pid: str, wanted: set[str], current: dict[str, float],
               cause: Cause, now: float, result: Outcome, only: set[str] | None = None) -> None:
        """Enter and leave so that the profile's memberships are ``wanted`` (see
        :meth:`evaluate` for ``only`` and audiences this engine does not know)."""
        for name in [a.name for a in self.audiences]:
            if only is not None and name not in only:
                continue
            if name in wanted and name not in current:
                tx.enter(name, pid, now)
                current[name] = now
                result.entered += 1
                result.events.append(self.segment_event(ENTERED, name, pid, cause, now))
            elif name not in wanted and name in current:
                tx.leave(name, pid)
                result.exited += 1
                result.events.append(self.segment_event(EXITED, name, pid, cause, now,
                                                        since=current.pop(name)))

    @staticmethod
    def segment_event(kind: str, audience: str, pid: str, cause: Cause, now: float,
                      since: float | None = None) -> OutboxRow:
        """The event of one membership change, as its outbox row.

        The first evaluation of new audiences emits one of these per member (two
        million for 50 audiences over 100,000 profiles), so the row is a compact record
        of the values the event is made of; the state's ``pending_outbox`` gives the
        event itself, the same JSON as ``Event(...).to_json()`` field for field (see
        :mod:`tessera.personalization.state.outbox`; a test holds them equal).
        """
        return compact(kind, audience, pid, cause.uid, cause.reason, cause.type,
                       cause.received_at, now, since)

    @staticmethod
    def queue(tx: StateTx, result: Outcome) -> None:
        """The outcome's events into the outbox, up to a thousand a row."""
        if result.events:
            tx.add_outbox(packed(result.events))

    # -- merges -----------------------------------------------------------------------

    def merge(self, event: Event) -> Outcome:
        """Apply an ``identity.merged`` event: combine the merged profiles into the survivor."""
        result = Outcome()
        data = event.data if isinstance(event.data, dict) else {}
        into = data.get("profile_id")
        merged = [m for m in data.get("merged_profile_ids") or [] if isinstance(m, str)]
        now = self.clock()
        if not isinstance(into, str) or not merged:
            return result
        cause = Cause(event.uid, "merged", event.type, event.received_at)
        with self.state.transaction() as tx:
            if tx.applied([event.uid]):
                result.skipped = 1
                return result
            everyone = [into, *merged]
            tx.lock(everyone)
            states = tx.trait_states(everyone)
            members = tx.memberships(everyone)
            combined: TraitStates = {}
            for name, trait in self.computed.traits.items():
                parts: list[TraitState | None] = [states[p].get(name) for p in everyone]
                if any(parts):
                    combined[name] = trait.merge(parts)
            for pid in merged:
                for audience, since in members[pid].items():
                    result.exited += 1
                    result.events.append(self.segment_event(EXITED, audience, pid, cause, now,
                                                            since=since))
                tx.move(pid, into)
            self._save(tx, into, combined, set(combined), now)
            self.evaluate(tx, into, combined, members[into], cause, now, result)
            tx.mark_applied([event.uid], now)
            self.queue(tx, result)
        result.applied = 1
        return result

    # -- erasure and unmerges ----------------------------------------------------------

    def erase(self, event: Event) -> Outcome:
        """Apply ``profile.erased``: the person leaves every audience and is forgotten
        (aggregates, window edge, memberships, offer history)."""
        result = Outcome()
        data = event.data if isinstance(event.data, dict) else {}
        pids = [p for p in [data.get("profile_id"), *(data.get("merged_profile_ids") or [])]
                if isinstance(p, str) and p]
        if not pids:
            return result
        now = self.clock()
        cause = Cause(event.uid, "erased", event.type, event.received_at)
        with self.state.transaction() as tx:
            if tx.applied([event.uid]):
                result.skipped = 1
                return result
            tx.lock(pids)
            for pid, members in tx.memberships(pids).items():
                for audience, since in members.items():
                    result.exited += 1
                    result.events.append(self.segment_event(EXITED, audience, pid, cause, now,
                                                            since=since))
            tx.drop(pids)
            tx.mark_applied([event.uid], now)
            self.queue(tx, result)
        result.applied = 1
        return result

    def unmerge(self, event: Event, timelines: Callable[[str], Sequence[Event]]) -> Outcome:
        """Apply ``identity.unmerged``: the profiles' events were split between them, so each
        one's aggregates and offer history are recomputed from its own timeline now."""
        result = Outcome()
        data = event.data if isinstance(event.data, dict) else {}
        pids = [p for p in [data.get("profile_id"), *(data.get("split_profile_ids") or [])]
                if isinstance(p, str) and p]
        if not pids:
            return result
        with self.state.transaction() as tx:
            if tx.applied([event.uid]):
                result.skipped = 1
                return result
            tx.lock(pids)  # all of them, in sorted order, before any is read
            for pid in pids:
                self.rebuild_profile(tx, pid, timelines(pid), result,
                                     Cause(event.uid, "unmerged", event.type, event.received_at))
            tx.mark_applied([event.uid], self.clock())
            self.queue(tx, result)
        result.applied = 1
        return result

    # -- window edges -----------------------------------------------------------------

    def expire(self, pids: Sequence[str]) -> Outcome:
        """Re-evaluate profiles whose window edge passed (``State.due``)."""
        result = Outcome()
        now = self.clock()
        with self.state.transaction() as tx:
            tx.lock(pids)
            states = tx.trait_states(pids)
            members = tx.memberships(pids)
            for pid in pids:
                due = self.computed.next_expiry(states[pid])
                cause = Cause(f"window:{pid}:{due!r}", "window")
                self._save(tx, pid, states[pid], set(), now)
                if due is None or due > now:
                    tx.set_due(pid, due)  # not due any more (another worker got to it)
                    continue
                self.evaluate(tx, pid, states[pid], members[pid], cause, now, result)
                result.applied += 1
            self.queue(tx, result)
        return result

    # -- rebuilds ----------------------------------------------------------------------

    def rebuild_profile(self, tx: StateTx, pid: str, events: Sequence[Event],
                        result: Outcome, cause: Cause | None = None) -> None:
        """Recompute one profile's aggregates and offers from its whole timeline."""
        now = self.clock()
        tx.lock([pid])
        current = tx.memberships([pid])[pid]
        tx.drop([pid])
        states: TraitStates = {}
        offers: list[OfferRecord] = []
        for event in events:
            for trait, value in self.computed.contributions(event):
                states[trait.name] = trait.add(states.get(trait.name), event.time, value, now)
            record = self.outcome_of(event, pid)
            if record is not None:
                offers.append(record)
        horizon = now - self.config.offer_history_days * 86400.0
        tx.add_offers([o for o in offers if o.at >= horizon])
        self._save(tx, pid, states, set(states), now)
        for audience, since in current.items():
            tx.enter(audience, pid, since)  # kept: only real changes become events
        self.evaluate(tx, pid, states, current,
                      cause or Cause(f"rebuild:{pid}:{now!r}", "rebuild"), now, result)
        tx.mark_applied([e.uid for e in events], now)
