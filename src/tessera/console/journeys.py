"""The Journeys page: each configured journey, its steps, and the counts per step.

The counts are :func:`tessera.journeys.report.counts_in`, the same figures as
``GET /v1/journeys``; this module only lays them out next to each step's
definition so that a marketer can read where customers are and where they
leave.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.console.views import _login_redirect, _page, _session, _state
from tessera.journeys.model import END, JourneyConfig, Step
from tessera.journeys.report import WHOLE, counts_in

router = APIRouter(prefix="/console", include_in_schema=False)


def duration(seconds: float) -> str:
    """``7d``, ``2h``, ``30m``, ``45s``: the largest unit that divides it, as configured."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _filter_text(flt: Any) -> str:
    parts = []
    if flt.types:
        parts.append("type " + " or ".join(flt.types))
    if flt.sources:
        parts.append("from " + " or ".join(flt.sources))
    if flt.condition is not None:
        parts.append("if " + ", ".join(flt.condition.paths()))
    return "; ".join(parts) or "any event"


def step_summary(journey: JourneyConfig, step: Step) -> str:
    """What a step does, in a few words (the YAML is one click away in the configuration)."""
    index = journey.index(step.id)
    following = journey.steps[index + 1].id if index + 1 < len(journey.steps) else END
    if step.wait is not None:
        if step.wait.for_ is not None:
            return f"wait {duration(step.wait.for_)}, then {following}"
        wait = step.wait
        assert wait.until is not None
        return (f"wait until {_filter_text(wait.until)} (then {wait.on_event or following}), "
                f"at most {duration(wait.timeout or 0)} (then {wait.on_timeout or following})")
    if step.condition is not None:
        cond = step.condition
        return (f"if {', '.join(cond.if_.paths())}: {cond.then or following}, "
                f"else {cond.else_}")
    if step.action is not None:
        if step.action.emit is not None:
            return f"emit {step.action.emit.type}"
        assert step.action.call is not None
        dest = step.action.call.destination
        return f"call {dest if isinstance(dest, str) else dest.type}"
    return "leave the journey"


def journey_views(journeys: list[JourneyConfig],
                  counts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {c["name"]: c["steps"] for c in counts}
    out = []
    for j in journeys:
        steps = by_name.get(j.name, {})
        out.append({
            "name": j.name,
            "trigger": _filter_text(j.trigger),
            "exit_on": [_filter_text(f) for f in j.exit_on],
            "reentry": j.reentry,
            "whole": steps.get(WHOLE, {}),
            "steps": [{"id": s.id, "kind": s.kind, "summary": step_summary(j, s),
                       "counts": steps.get(s.id, {})} for s in j.steps],
        })
    return out


@router.get("/journeys")
async def journeys(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    configured = runtime.config.journeys
    counts = await asyncio.to_thread(counts_in, configured, runtime.data_dir, runtime.store_url)
    return _page(request, "journeys.html", session, "journeys", title="Journeys",
                 journeys=journey_views(configured, counts))
