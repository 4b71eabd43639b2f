"""Computed traits, updated incrementally: partial aggregates in time buckets.

Every (profile, computed trait) keeps a small JSON state. A trait without a
window keeps one partial aggregate of its whole history; a windowed trait keeps
one partial per time bucket (``granularity`` wide, by event time). A new event
adds to one partial; the trait's value combines the partials of the buckets
still inside the window at the time of reading, and a bucket that has left the
window is dropped. So a window slides without any event being read again, and
the state of a profile stays small (about ``window / granularity`` buckets at
most) whatever its event rate.

Partials combine associatively (counts and sums add, minimum of minima, the
earlier first, the later last, value counts add), which is also what merging
two profiles (``identity.merged``) needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from tessera.activation.expr import context, holds, lookup, matches_envelope
from tessera.events.envelope import Event
from tessera.personalization.model import ComputedTraitConfig

_MISSING = object()
Partial = dict[str, Any]
TraitState = dict[str, Any]
"""``{"life": partial}`` without a window, ``{"b": {bucket index: partial}}`` with one."""

_COUNTED = frozenset({"distinct_count", "most_frequent"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _key(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def add(function: str, partial: Partial, at: float, value: Any) -> None:
    """Account one event (its time and value) into a partial aggregate, in place."""
    partial["n"] = partial.get("n", 0) + 1
    if function in ("sum", "avg"):
        partial["s"] = partial.get("s", 0) + value
    elif function in ("min", "max"):
        slot = "lo" if function == "min" else "hi"
        old = partial.get(slot, _MISSING)
        try:
            better = old is _MISSING or (value < old if slot == "lo" else value > old)
        except TypeError:  # a text among numbers: keep the comparable one
            better = False
        if better:
            partial[slot] = value
    elif function == "first":
        first = partial.get("f")
        if first is None or at < first[0]:
            partial["f"] = [at, value]
    elif function == "last":
        last = partial.get("l")
        if last is None or at >= last[0]:
            partial["l"] = [at, value]
    elif function in _COUNTED:
        counts = partial.setdefault("c", {})
        key = _key(value)
        counts[key] = counts.get(key, 0) + 1
        partial.setdefault("t", {})[key] = max(at, partial.get("t", {}).get(key, at))


def combine(function: str, partials: Iterable[Partial]) -> Partial:
    """One partial equivalent to all of ``partials`` (they may be reused: copied, not moved)."""
    out: Partial = {}
    for p in partials:
        if not p:
            continue
        out["n"] = out.get("n", 0) + p.get("n", 0)
        if "s" in p:
            out["s"] = out.get("s", 0) + p["s"]
        for slot, pick in (("lo", min), ("hi", max)):
            if slot in p:
                try:
                    out[slot] = p[slot] if slot not in out else pick(out[slot], p[slot])
                except TypeError:
                    out.setdefault(slot, p[slot])
        if "f" in p and ("f" not in out or p["f"][0] < out["f"][0]):
            out["f"] = p["f"]
        if "l" in p and ("l" not in out or p["l"][0] >= out["l"][0]):
            out["l"] = p["l"]
        if "c" in p:
            counts = out.setdefault("c", {})
            seen = out.setdefault("t", {})
            for key, n in p["c"].items():
                counts[key] = counts.get(key, 0) + n
                seen[key] = max(seen.get(key, 0.0), p.get("t", {}).get(key, 0.0))
    return out


def result(function: str, partial: Partial) -> Any:
    """The trait's value from a combined partial (what a profile with no events shows too)."""
    n = partial.get("n", 0)
    if function == "count":
        return n
    if function == "sum":
        return partial.get("s", 0)
    if function == "avg":
        return partial["s"] / n if n else None
    if function == "min":
        return partial.get("lo")
    if function == "max":
        return partial.get("hi")
    if function == "first":
        return partial["f"][1] if "f" in partial else None
    if function == "last":
        return partial["l"][1] if "l" in partial else None
    counts: dict[str, int] = partial.get("c", {})
    if function == "distinct_count":
        return len(counts)
    if not counts:  # most_frequent
        return None
    seen = partial.get("t", {})
    # the most frequent; among equals, the one seen last
    best = max(counts, key=lambda k: (counts[k], seen.get(k, 0.0)))
    return orjson.loads(best)


class ComputedTrait:
    """One declared (or implicit) computed trait: which events count and how they aggregate."""

    def __init__(self, config: ComputedTraitConfig) -> None:
        self.config = config
        self.name = config.name
        self.function = config.function
        self.window = config.window
        self.bucket = config.bucket
        flt = config.filter
        self._needs_ctx = flt.condition is not None

    def extract(self, event: Event, ctx: dict[str, Any] | None = None) -> Any:
        """The value this event contributes, or ``_MISSING`` if it does not count."""
        flt = self.config.filter
        if not matches_envelope(flt, event):
            return _MISSING
        if flt.condition is not None or self.config.value:
            ctx = ctx if ctx is not None else context(event, None)
            if flt.condition is not None and not holds(flt.condition, ctx):
                return _MISSING
        if self.config.value is None:
            return None
        assert ctx is not None
        value = lookup(ctx, self.config.value)
        if value is None:  # absent or null: the event does not count
            return _MISSING
        if self.function in ("sum", "avg") and not _number(value):
            return _MISSING
        if self.function in ("min", "max") and not (_number(value) or isinstance(value, str)):
            return _MISSING
        return value

    # -- state ---------------------------------------------------------------------

    def _live(self, index: int, now: float) -> bool:
        assert self.bucket is not None and self.window is not None
        return (index + 1) * self.bucket + self.window > now

    def add(self, state: TraitState | None, at: float, value: Any, now: float) -> TraitState:
        """The state after one more event. An event already outside the window is ignored."""
        state = state if state is not None else {}
        if self.bucket is None:
            add(self.function, state.setdefault("life", {}), at, value)
            return state
        index = math.floor(at / self.bucket)
        if not self._live(index, now):
            return state
        buckets = state.setdefault("b", {})
        add(self.function, buckets.setdefault(str(index), {}), at, value)
        return state

    def prune(self, state: TraitState, now: float) -> bool:
        """Drop the buckets that left the window; True if any did."""
        if self.bucket is None or not state.get("b"):
            return False
        gone = [k for k in state["b"] if not self._live(int(k), now)]
        for k in gone:
            del state["b"][k]
        return bool(gone)

    def value(self, state: TraitState | None, now: float) -> Any:
        if not state:
            return result(self.function, {})
        if self.bucket is None:
            return result(self.function, state.get("life", {}))
        live = [p for k, p in state.get("b", {}).items() if self._live(int(k), now)]
        return result(self.function, combine(self.function, live))

    def next_expiry(self, state: TraitState | None) -> float | None:
        """When the oldest bucket leaves the window (the value may change then)."""
        if not state or self.bucket is None or self.window is None or not state.get("b"):
            return None
        oldest = min(int(k) for k in state["b"])
        return (oldest + 1) * self.bucket + self.window

    def merge(self, states: Sequence[TraitState | None]) -> TraitState:
        """The state of a profile that is the union of these profiles (a merge)."""
        present = [s for s in states if s]
        if self.bucket is None:
            return {"life": combine(self.function, (s.get("life", {}) for s in present))}
        keys = {k for s in present for k in s.get("b", {})}
        return {"b": {k: combine(self.function, (s["b"][k] for s in present
                                                 if k in s.get("b", {}))) for k in keys}}


class ComputedTraits:
    """Every computed trait of the configuration."""

    def __init__(self, configs: Iterable[ComputedTraitConfig]) -> None:
        self.traits = {c.name: ComputedTrait(c) for c in configs}

    def contributions(self, event: Event) -> list[tuple[ComputedTrait, Any]]:
        """(trait, value) for every trait this event counts towards."""
        ctx: dict[str, Any] | None = None
        out = []
        for trait in self.traits.values():
            if not matches_envelope(trait.config.filter, event):
                continue
            if ctx is None:
                ctx = context(event, None)
            value = trait.extract(event, ctx)
            if value is not _MISSING:
                out.append((trait, value))
        return out

    def values(self, states: dict[str, TraitState], now: float) -> dict[str, Any]:
        """Every computed trait's value for one profile (absent state: the empty value)."""
        return {name: t.value(states.get(name), now) for name, t in self.traits.items()}

    def next_expiry(self, states: dict[str, TraitState]) -> float | None:
        due = [t.next_expiry(states.get(n)) for n, t in self.traits.items()]
        known = [d for d in due if d is not None]
        return min(known) if known else None
