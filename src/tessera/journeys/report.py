"""What a journey has done so far: counts per step, and the journeys of one profile.

The admin API (``GET /v1/journeys``) and the console show the same figures,
so they are computed here once from :class:`~tessera.journeys.state.JourneyState`.
Step ``*`` stands for the journey as a whole (entered it, completed it, left
it early); the other keys are the configured steps, in their order, each with
zeros until something happened there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tessera.journeys.model import JourneyConfig
from tessera.journeys.state import Instance, StepMetrics, open_journey_state

WHOLE = "*"
"""The step key of the journey as a whole."""
COUNTS = ("entered", "waiting", "completed", "exited")


def step_counts(journeys: Sequence[JourneyConfig],
                metrics: Iterable[StepMetrics]) -> list[dict[str, Any]]:
    """``[{"name", "steps": {step: {entered, waiting, completed, exited}}}]`` per journey."""
    by_journey: dict[str, dict[str, Any]] = {}
    for j in journeys:
        by_journey[j.name] = {"name": j.name, "steps": {
            s: dict.fromkeys(COUNTS, 0) for s in [WHOLE, *(step.id for step in j.steps)]}}
    for m in metrics:
        if m.journey in by_journey:
            by_journey[m.journey]["steps"][m.step] = {
                "entered": m.entered, "waiting": m.waiting, "completed": m.completed,
                "exited": m.exited}
    return list(by_journey.values())


def counts_in(journeys: Sequence[JourneyConfig], data_dir: Path,
              store_url: str | None = None) -> list[dict[str, Any]]:
    """:func:`step_counts` from the journey state beside the store: the store's
    PostgreSQL if ``store_url`` names one, else the data directory's (blocking)."""
    if not journeys:
        return []
    state = open_journey_state(store_url, Path(data_dir))
    try:
        return step_counts(journeys, state.metrics())
    finally:
        state.close()


def instances_of(journeys: Sequence[JourneyConfig], data_dir: Path,
                 profile_ids: Iterable[str], store_url: str | None = None) -> list[Instance]:
    """Every journey instance of these profile ids (a profile and those merged into it),
    oldest first, from the journey state beside the store (blocking)."""
    if not journeys:
        return []
    state = open_journey_state(store_url, Path(data_dir))
    try:
        found = [i for pid in dict.fromkeys(profile_ids) for i in state.instances(pid)]
    finally:
        state.close()
    return sorted(found, key=lambda i: (i.entered_at, i.id))
