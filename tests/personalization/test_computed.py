"""Computed traits: every function, windows that slide without re-reading events, merges."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tessera.events.envelope import Event
from tessera.personalization.computed import ComputedTrait, ComputedTraits
from tessera.personalization.model import ComputedTraitConfig

DAY = 86400.0
T0 = 1_700_000_000.0


def trait(**spec: Any) -> ComputedTrait:
    spec.setdefault("name", "t")
    return ComputedTrait(ComputedTraitConfig.model_validate(spec, strict=False))


def event(type_: str = "x", at: float = T0, **data: Any) -> Event:
    return Event(id=f"{type_}-{at}-{random.random()}", source="s", type=type_, time=at,
                 received_at=at, source_name="web", data=data)


def feed(t: ComputedTrait, values: list[tuple[float, Any]], now: float) -> dict[str, Any]:
    state: dict[str, Any] | None = None
    for at, value in values:
        state = t.add(state, at, value, now)
    assert state is not None
    return state


@pytest.mark.parametrize(("function", "expected"), [
    ("count", 4), ("sum", 17), ("min", 2), ("max", 7), ("avg", 4.25), ("first", 5),
    ("last", 3), ("distinct_count", 3), ("most_frequent", 5),
])
def test_each_function_over_the_whole_history(function: str, expected: Any) -> None:
    t = trait(function=function, value=None if function == "count" else "data.v")
    # out of order: first and last follow event time, not arrival
    state = feed(t, [(T0 + 30, 3), (T0, 5), (T0 + 10, 2), (T0 + 20, 7)], T0 + 40)
    if function in ("distinct_count", "most_frequent"):
        state = feed(t, [(T0 + 30, 3), (T0, 5), (T0 + 10, 5), (T0 + 20, 7)], T0 + 40)
        expected = {"distinct_count": 3, "most_frequent": 5}[function]
    assert t.value(state, T0 + 50) == expected


def test_empty_values() -> None:
    assert trait(function="count").value(None, T0) == 0
    assert trait(function="sum", value="data.v").value(None, T0) == 0
    assert trait(function="avg", value="data.v").value(None, T0) is None
    assert trait(function="last", value="data.v").value(None, T0) is None
    assert trait(function="distinct_count", value="data.v").value(None, T0) == 0


def test_a_window_slides_and_old_events_expire_without_being_read_again() -> None:
    t = trait(function="count", window="10d", granularity="1h")
    state = feed(t, [(T0, None), (T0 + 5 * DAY, None)], T0 + 5 * DAY)
    assert t.value(state, T0 + 5 * DAY) == 2
    # the first event's bucket leaves the window one bucket after 10 days
    assert t.next_expiry(state) == pytest.approx((T0 // 3600 + 1) * 3600 + 10 * DAY)
    assert t.value(state, T0 + 10 * DAY + 3600) == 1
    assert t.value(state, T0 + 15 * DAY + 3600) == 0
    # pruning drops the bucket from the state itself
    assert t.prune(state, T0 + 10 * DAY + 3600)
    assert len(state["b"]) == 1
    assert not t.prune(state, T0 + 10 * DAY + 3600)


def test_an_event_counts_for_at_least_the_window_and_at_most_window_plus_granularity() -> None:
    t = trait(function="count", window=100.0, granularity=10.0)
    for offset in (0.0, 3.3, 9.99):
        at = T0 + offset
        state = feed(t, [(at, None)], at)
        assert t.value(state, at + 100.0 - 1e-6) == 1
        assert t.value(state, at + 110.0) == 0


def test_late_events_outside_the_window_are_ignored() -> None:
    t = trait(function="sum", value="data.v", window="1d")
    state = t.add(None, T0 - 3 * DAY, 10, T0)
    assert t.value(state, T0) == 0
    assert state == {}


def test_windowed_min_max_last_over_live_buckets_only() -> None:
    mx = trait(function="max", value="data.v", window=100.0, granularity=1.0)
    last = trait(function="last", value="data.v", window=100.0, granularity=1.0)
    values = [(T0, 50), (T0 + 60, 7)]
    assert mx.value(feed(mx, values, T0 + 60), T0 + 60) == 50
    assert mx.value(feed(mx, values, T0 + 60), T0 + 101) == 7
    assert last.value(feed(last, values, T0 + 60), T0 + 161) is None


def test_merge_equals_the_union_of_the_events() -> None:
    rng = random.Random(3)
    for function in ("count", "sum", "min", "max", "avg", "first", "last", "distinct_count",
                     "most_frequent"):
        for window in (None, 50.0):
            spec: dict[str, Any] = {"function": function}
            if function != "count":
                spec["value"] = "data.v"
            if window:
                spec.update(window=window, granularity=5.0)
            t = trait(**spec)
            now = T0 + 100
            a = [(T0 + rng.uniform(0, 100), rng.randint(0, 5)) for _ in range(20)]
            b = [(T0 + rng.uniform(0, 100), rng.randint(0, 5)) for _ in range(20)]
            merged = t.merge([feed(t, a, now), feed(t, b, now), None])
            together = feed(t, a + b, now)
            assert t.value(merged, now) == t.value(together, now), (function, window)


def test_sum_ignores_values_that_are_not_numbers() -> None:
    traits = ComputedTraits([ComputedTraitConfig(name="spend", function="sum", value="data.total")])
    assert [v for _, v in traits.contributions(event(total=12.5))] == [12.5]
    assert traits.contributions(event(total="12.5")) == []
    assert traits.contributions(event(total=True)) == []
    assert traits.contributions(event()) == []


def test_filters_on_type_source_and_condition() -> None:
    config = ComputedTraitConfig.model_validate({
        "name": "tows", "function": "count",
        "filter": {"types": ["com.example.roadservice.*"], "sources": ["web"],
                   "condition": {"path": "data.resolution", "eq": "towed"}}}, strict=False)
    traits = ComputedTraits([config])
    assert len(traits.contributions(event("com.example.roadservice.done", resolution="towed"))) == 1
    assert traits.contributions(event("com.example.roadservice.done", resolution="fixed")) == []
    assert traits.contributions(event("com.example.travel.done", resolution="towed")) == []


def test_configuration_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="needs 'value'"):
        ComputedTraitConfig.model_validate({"name": "x", "function": "sum"})
    with pytest.raises(ValueError, match="only with a 'window'"):
        ComputedTraitConfig.model_validate({"name": "x", "function": "count",
                                            "granularity": 5.0})
