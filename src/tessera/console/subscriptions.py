"""The Subscriptions page: every subscription with its delivery health, pause, resume, replay.

Nothing is computed here: the rows are :func:`tessera.activation.service.overview`
(what ``GET /v1/subscriptions`` answers), pausing flips the same flag in the
activation state as the API and ``tessera subscriptions pause``, and replay is
:func:`tessera.activation.dead_letters.replay_subscription`. The running
worker picks a pause or resume up within its refresh interval.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.activation.api import activation_state
from tessera.activation.dead_letters import replay_subscription
from tessera.activation.service import overview
from tessera.console.views import _login_redirect, _page, _require_csrf, _session, _state
from tessera.runtime import Runtime

router = APIRouter(prefix="/console", include_in_schema=False)


def destination_label(sub: dict[str, Any]) -> str:
    """One line for the destination: a named one, or its type and where it goes."""
    dest = sub.get("destination")
    if isinstance(dest, str):
        return dest
    if not isinstance(dest, dict):
        return ""
    where = dest.get("url") or dest.get("path") or dest.get("function") or dest.get(
        "entry_point") or ""
    return f"{dest.get('type', '?')} {where}".strip()


async def _rows(runtime: Runtime, name: str | None = None) -> list[dict[str, Any]]:
    return await overview(runtime.config, runtime.bus, activation_state(runtime), name)


def _refused(text: str, status: int) -> Response:
    return Response(text, status_code=status, media_type="text/plain")


@router.get("/subscriptions")
async def subscriptions(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    error = ""
    try:
        rows = await _rows(runtime)
    except Exception as exc:  # the bus is down: say so instead of a 500
        rows, error = [], f"the bus is unavailable: {exc}"
    return _page(request, "subscriptions.html", session, "subscriptions", title="Subscriptions",
                 subs=rows, error=error, label=destination_label, message="")


async def _act(request: Request, name: str, action: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    if not await _require_csrf(request, session):
        return _refused("missing or wrong CSRF token", 403)
    runtime = _state(request).runtime
    if not await _rows(runtime, name):
        return _refused(f"no subscription {name!r}", 404)
    message = ""
    if action in ("pause", "resume"):
        state = activation_state(runtime)
        if not await asyncio.to_thread(state.set_paused, name, action == "pause"):
            message = "not started yet: start the worker first"
    else:
        done = await replay_subscription(runtime.bus, name)
        message = (f"{len(done.replayed)} dead letter(s) queued for replay"
                   if done.replayed or not done.missing
                   else "already replayed by someone else")
    [row] = await _rows(runtime, name)
    return _page(request, "_subscription_row.html", session, s=row, label=destination_label,
                 message=message)


@router.post("/subscriptions/{name}/pause")
async def pause(request: Request, name: str) -> Response:
    return await _act(request, name, "pause")


@router.post("/subscriptions/{name}/resume")
async def resume(request: Request, name: str) -> Response:
    return await _act(request, name, "resume")


@router.post("/subscriptions/{name}/replay")
async def replay(request: Request, name: str) -> Response:
    return await _act(request, name, "replay")
