"""The review API (admin scope): list candidate pairs, accept, reject, unmerge."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.identity.review import STATES, ReviewStore
from tessera.runtime import Runtime

router = APIRouter(tags=["identity"])


def _setup(request: Request) -> tuple[Runtime, ReviewStore]:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, "admin")
    state = request.app.state
    if getattr(state, "identity_review", None) is None:
        state.identity_review = ReviewStore.in_data_dir(runtime.data_dir)
    review: ReviewStore = state.identity_review
    return runtime, review


async def _body(request: Request) -> dict[str, Any]:
    body = parse_json(await read_body(request, 64 * 1024))  # strict JSON, 400 with the reason
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return body


def _pair(body: dict[str, Any]) -> tuple[str, str]:
    a, b = body.get("a"), body.get("b")
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        raise ApiError(400, "invalid_request", "give the pair's profile ids as a and b")
    return a, b


MAX_OFFSET = 2**62
"""Past any real review queue, inside a 64-bit integer (SQLite and PostgreSQL)."""


@router.get("/v1/identity/review", summary="Candidate pairs, highest score first (admin)")
async def list_pairs(request: Request, state: str = "pending", limit: int = 100,
                     offset: int = 0) -> Response:
    _, review = _setup(request)
    if state not in STATES:
        raise ApiError(400, "invalid_request", f"state must be one of {', '.join(STATES)}")
    # clamped, as the limit is: an offset past SQLite's 64-bit integers was a 500
    pairs = await asyncio.to_thread(review.pairs, state, max(1, min(limit, 1000)),
                                    max(0, min(offset, MAX_OFFSET)))
    return json_response({"pairs": [p.as_dict() for p in pairs], "counts": review.counts()})


@router.post("/v1/identity/review/accept", summary="Merge a candidate pair (admin)")
async def accept_pair(request: Request) -> Response:
    from tessera.identity.matching import Matcher

    runtime, review = _setup(request)
    body = await _body(request)
    a, b = _pair(body)
    matcher = Matcher(runtime.config, runtime.store, review)
    done = await asyncio.to_thread(matcher.accept, a, b, str(body.get("by", "api")))
    if done is None:
        raise ApiError(409, "not_merged", "a profile is gone or an identifier limit forbids it")
    return json_response({"profile_id": done[0], "merged_profile_id": done[1]})


@router.post("/v1/identity/review/reject", summary="Reject a candidate pair for good (admin)")
async def reject_pair(request: Request) -> Response:
    from tessera.identity.matching import Matcher

    runtime, review = _setup(request)
    body = await _body(request)
    a, b = _pair(body)
    matcher = Matcher(runtime.config, runtime.store, review)
    await asyncio.to_thread(matcher.reject, a, b, str(body.get("by", "api")), body.get("note"))
    return json_response({"a": a, "b": b, "state": "rejected"})


@router.post("/v1/identity/unmerge", summary="Split a wrongly merged profile apart (admin)")
async def unmerge(request: Request) -> Response:
    from tessera.identity.unmerge import UnmergeError, Unmerger

    runtime, review = _setup(request)
    body = await _body(request)
    profile = body.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ApiError(400, "invalid_request", "give the profile (id or TYPE:VALUE)")
    unmerger = Unmerger(runtime.config, runtime.store, review)
    try:
        result = await asyncio.to_thread(unmerger.unmerge, profile, body.get("merged"),
                                         str(body.get("by", "api")))
    except UnmergeError as exc:
        raise ApiError(409, "not_unmerged", str(exc)) from None
    return json_response({"profile_id": result.profile_id, "split_off": result.split_off,
                          "moved_identifiers": result.moved_identifiers,
                          "moved_events": result.moved_events})
