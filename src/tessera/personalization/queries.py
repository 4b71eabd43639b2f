"""What the API and the command line ask of personalization: reads, previews, decisions.

:class:`Personalization` puts the store, the state and the configuration
together for readers. Reads never write: a profile's computed traits are
computed from its buckets at the time of reading, so they are right even if
the window timer has not run yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.events.envelope import Event, iso_time
from tessera.personalization.audiences import Catalogued, catalog
from tessera.personalization.computed import ComputedTraits
from tessera.personalization.consent import TraitConsent
from tessera.personalization.engine import profile_facts
from tessera.personalization.model import PersonalizationConfig, Rule
from tessera.personalization.nba import Decision, DecisionEngine
from tessera.personalization.rules import Facts, evaluate
from tessera.personalization.state import OfferRecord, State
from tessera.store.base import Store, TimelineEntry

TIMELINE_PAGE = 500


def event_of(entry: TimelineEntry) -> Event:
    """A timeline entry back as an envelope (for rebuilds and previews)."""
    ce = entry.event
    known = {"specversion", "id", "source", "type", "time", "subject", "datacontenttype",
             "dataschema", "data", "tesserasource", "tesserareceivedat"}
    return Event(id=str(ce.get("id", entry.event_uid)), source=str(ce.get("source", "")),
                 type=entry.type, time=entry.time, received_at=entry.received_at,
                 source_name=entry.source, data=ce.get("data"), subject=ce.get("subject"),
                 datacontenttype=ce.get("datacontenttype"), dataschema=ce.get("dataschema"),
                 extensions={k: v for k, v in ce.items() if k not in known},
                 uid=entry.event_uid)


def timeline_events(store: Store, pid: str, limit: int | None = None) -> list[Event]:
    """A profile's stored events, oldest first (at most ``limit`` of the newest)."""
    out: list[TimelineEntry] = []
    before: tuple[float, str] | None = None
    while limit is None or len(out) < limit:
        page = store.timeline(pid, TIMELINE_PAGE, before)
        out += page
        if len(page) < TIMELINE_PAGE:
            break
        before = (page[-1].time, page[-1].event_uid)
    if limit is not None:
        out = out[:limit]
    return [event_of(e) for e in reversed(out)]


@dataclass(slots=True)
class Preview:
    sampled: int
    matched: int
    total: int
    examples: list[str]

    def as_dict(self) -> dict[str, Any]:
        estimate = round(self.matched / self.sampled * self.total) if self.sampled else 0
        return {"sampled": self.sampled, "matched": self.matched, "profiles": self.total,
                "estimated_size": estimate, "exact": self.sampled >= self.total,
                "examples": self.examples}


class Personalization:
    def __init__(self, config: PersonalizationConfig, store: Store, state: State,
                 decisions: DecisionEngine | None = None) -> None:
        self.config = config
        self.store = store
        self.state = state
        self.computed = ComputedTraits(config.all_computed())
        self.consent = TraitConsent(config.consent_trait_prefix)
        self.decisions = decisions or DecisionEngine(config)
        self._catalog: list[Catalogued] | None = None
        self._catalog_version: tuple[int, float, int] | None = None

    @classmethod
    def load(cls, config: PersonalizationConfig, store: Store, state: State,
             base: Path | None = None) -> Personalization:
        return cls(config, store, state, DecisionEngine.load(config, base))

    # -- audiences, configured and saved ---------------------------------------------------

    def catalog(self) -> list[Catalogued]:
        """Configured and saved audiences; the saved ones are read again when the state's
        version of them changed (any process may save, delete or finish filling one in)."""
        version = self.state.audiences_version()
        if self._catalog is None or version != self._catalog_version:
            self._catalog = catalog(self.config, self.state.saved_audiences())
            self._catalog_version = version
        return self._catalog

    def forget_saved(self) -> None:
        """This process changed the saved audiences: read them again next time."""
        self._catalog = None

    def audience(self, name: str) -> Catalogued | None:
        return next((c for c in self.catalog() if c.audience.name == name), None)

    @property
    def audience_names(self) -> list[str]:
        return [c.audience.name for c in self.catalog()]

    # -- one profile ---------------------------------------------------------------------

    def facts(self, pid: str, now: float | None = None) -> Facts:
        now = time.time() if now is None else now
        traits, identifiers = profile_facts(self.store.get_profile(pid), pid)
        states = self.state.trait_states_of(pid)
        return Facts(profile_id=pid, traits=traits,
                     computed=self.computed.values(states, now), identifiers=identifiers,
                     audiences=set(self.state.memberships_of(pid)),
                     consent=self.consent.for_profile(traits))

    def computed_of(self, pid: str, now: float | None = None) -> dict[str, Any]:
        """The declared computed traits' values (implicit event-history ones left out)."""
        now = time.time() if now is None else now
        states = self.state.trait_states_of(pid)
        return {t.name: self.computed.traits[t.name].value(states.get(t.name), now)
                for t in self.config.computed_traits}

    def segments_of(self, pid: str) -> list[dict[str, Any]]:
        members = self.state.memberships_of(pid)
        return [{"segment": name, "since": iso_time(members[name])}
                for name in self.audience_names if name in members]

    def person(self, pids: Sequence[str], now: float | None = None) -> dict[str, Any]:
        """What the personalization state holds about one person (a profile and the
        profiles merged into it), for an access request: computed traits, audience
        memberships with the time each was entered, the offer history and where each
        action offered to them stands against its suppression, cooldowns and caps."""
        now = time.time() if now is None else now
        origins = {c.audience.name: c.origin for c in self.catalog()}
        computed: dict[str, dict[str, Any]] = {}
        segments: list[dict[str, Any]] = []
        offers: list[OfferRecord] = []
        for pid in pids:
            values = self.computed_of(pid, now)
            if self.state.trait_states_of(pid):
                computed[pid] = values
            segments += [{"profile_id": pid, "segment": name, "since": iso_time(since),
                          "origin": origins.get(name, "removed")}
                         for name, since in sorted(self.state.memberships_of(pid).items())]
            offers += self.state.offers_of(pid)
        offers.sort(key=lambda o: o.at)
        standing = []
        for action in self.config.actions:
            if not any(o.action == action.name for o in offers):
                continue
            for channel in action.channels:
                reasons: list[str] = []
                rejection = self.decisions.within_caps(action, offers, channel, now, reasons)
                standing.append({"action": action.name, "channel": channel,
                                 "status": rejection[0] if rejection else "available",
                                 "reasons": [rejection[1]] if rejection else reasons})
        return {
            "computed_traits": computed,
            "segments": segments,
            "offers": [{"profile_id": o.profile_id, "action": o.action, "channel": o.channel,
                        "outcome": o.outcome, "at": iso_time(o.at), "event_uid": o.uid}
                       for o in offers],
            "caps": standing,
        }

    def decide(self, pid: str, channel: str, limit: int, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        facts = self.facts(pid, now)
        return self.decisions.decide(facts, self.state.offers_of(pid), channel, limit, now)

    # -- audiences ----------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        found = self.state.sizes()
        return {name: found.get(name, 0) for name in self.audience_names}

    def members(self, audience: str, after: str | None, limit: int) -> list[tuple[str, float]]:
        return self.state.members(audience, after, limit)

    def _profiles(self) -> Iterator[str]:
        yield from self.store.iter_profile_ids()

    def preview(self, rule: Rule, sample: int, examples: int) -> Preview:
        """Evaluate a rule that is not saved yet over (a sample of) the existing profiles.

        Event-history conditions that no configured rule uses are not precomputed;
        they are counted from each sampled profile's stored timeline.
        """
        now = time.time()
        missing = [h.trait() for h in rule.histories()
                   if h.trait().name not in self.computed.traits]
        extra = ComputedTraits(missing)
        sampled = matched = total = 0
        found: list[str] = []
        for pid in self._profiles():
            total += 1
            if sampled >= sample:
                continue
            sampled += 1
            facts = self.facts(pid, now)
            if extra.traits:
                states: dict[str, Any] = {}
                for event in timeline_events(self.store, pid):
                    for trait, value in extra.contributions(event):
                        states[trait.name] = trait.add(states.get(trait.name), event.time,
                                                       value, now)
                facts.computed.update(extra.values(states, now))
            if evaluate(rule, facts):
                matched += 1
                if len(found) < examples:
                    found.append(pid)
        return Preview(sampled, matched, total, found)
