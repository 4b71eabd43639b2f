"""The identity review queue: probabilistic match candidates waiting for a person.

Each pending pair of :class:`tessera.identity.review.ReviewStore` is shown
with its score and the fields matching compared, side by side (the values as
the scoring saw them: :func:`tessera.identity.matching.compared_value`).
Accept and Reject call :class:`tessera.identity.matching.Matcher`, as ``tessera
identity accept|reject`` and ``/v1/identity/review/*`` do, so a decision is
remembered: a rejected pair is never queued or merged again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.console.views import _form, _login_redirect, _page, _session, _state
from tessera.identity.matching import DEFAULT_SETTINGS, Matcher, compared_value
from tessera.identity.review import Pair, ReviewStore
from tessera.runtime import Runtime
from tessera.store.base import Profile

router = APIRouter(prefix="/console", include_in_schema=False)
SHOWN = 50
DECIDED_BY = "console"


@dataclass(slots=True)
class Compared:
    name: str
    a: Any
    b: Any
    agree: bool | None
    """None when either side has no value."""


@dataclass(slots=True)
class Candidate:
    pair: Pair
    a: Profile | None
    b: Profile | None
    fields: list[Compared] = field(default_factory=list)
    same_profile: bool = False
    """Both sides have been merged into one profile since the pair was found."""


def review_store(request: Request) -> ReviewStore:
    """The process's review store, shared with the identity API (one connection)."""
    state = request.app.state
    if getattr(state, "identity_review", None) is None:
        state.identity_review = ReviewStore.in_data_dir(_state(request).runtime.data_dir)
    store: ReviewStore = state.identity_review
    return store


def _profile(runtime: Runtime, pid: str) -> Profile | None:
    current = runtime.store.resolve(pid)
    return runtime.store.get_profile(current) if current else None


def compare(a: Profile | None, b: Profile | None) -> list[Compared]:
    """The matching columns either profile has a value in, side by side."""
    out = []
    for name, column in DEFAULT_SETTINGS.columns.items():
        ta = a.traits.get(column.trait) if a else None
        tb = b.traits.get(column.trait) if b else None
        if ta is None and tb is None:
            continue
        va, vb = compared_value(ta, name), compared_value(tb, name)
        out.append(Compared(column.trait, ta.value if ta else None, tb.value if tb else None,
                         None if va is None or vb is None else va == vb))
    return out


def candidates(runtime: Runtime, store: ReviewStore, limit: int = SHOWN) -> list[Candidate]:
    """Pending pairs, highest score first, with both profiles as they are now (blocking)."""
    out = []
    for pair in store.pairs("pending", limit):
        a, b = _profile(runtime, pair.a), _profile(runtime, pair.b)
        out.append(Candidate(pair, a, b, compare(a, b),
                             a is not None and b is not None and a.id == b.id))
    return out


@router.get("/identity-review")
async def review_queue(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    store = review_store(request)
    found = await asyncio.to_thread(candidates, runtime, store)
    counts = await asyncio.to_thread(store.counts)
    return _page(request, "review.html", session, "identity-review", title="Identity review",
                 candidates=found, counts=counts, shown=SHOWN, message="")


@router.post("/identity-review/{decision}")
async def decide(request: Request, decision: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    if decision not in ("accept", "reject"):
        return Response("not found", status_code=404, media_type="text/plain")
    form = await _form(request)
    state = _state(request)
    presented = request.headers.get("x-csrf-token") or form.get("csrf")
    if not state.sessions.check_csrf(session, presented):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    a, b = form.get("a", ""), form.get("b", "")
    missing = [name for name, value in (("a", a), ("b", b)) if not value]
    if missing:
        return Response(f"{', '.join(missing)}: give the pair's profile ids", status_code=400,
                        media_type="text/plain")
    runtime = state.runtime
    store = review_store(request)
    pair = await asyncio.to_thread(store.get, a, b)
    if pair is None:
        return Response(f"a, b: {a} and {b} are not a candidate pair", status_code=404,
                        media_type="text/plain")
    matcher = Matcher(runtime.config, runtime.store, store)
    if decision == "accept":
        done = await asyncio.to_thread(matcher.accept, a, b, DECIDED_BY)
        message = (f"merged {done[1]} into {done[0]}" if done else
                   "not merged: a profile is gone or an identifier limit forbids it")
        into = done[0] if done else None
    else:
        await asyncio.to_thread(matcher.reject, a, b, DECIDED_BY)
        message, into = "rejected: matching will not propose this pair again", None
    decided = await asyncio.to_thread(store.get, a, b)
    return _page(request, "_review_decided.html", session, pair=decided or pair,
                 message=message, into=into)
