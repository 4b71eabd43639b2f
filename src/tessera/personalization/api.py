"""The personalization API: a profile's segments and next best action, audiences, previews.

Scopes: ``segments:read`` for audiences and a profile's segments,
``decisions:read`` for next best actions, ``admin`` to save and delete
audiences (``POST|DELETE /v1/audiences``; ``admin`` has every scope). Reads
go to the profile store and the personalization state directly; with the
embedded files they run inline (well under a millisecond each), over a
network in a thread, as the profile API does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import Field, ValidationError
from starlette.responses import Response

from tessera.activation.model import Model
from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.api.profiles import _resolve
from tessera.events.envelope import iso_time
from tessera.events.errors import FieldError
from tessera.personalization import audiences, schemas
from tessera.personalization.model import Rule
from tessera.personalization.queries import Personalization
from tessera.personalization.state import open_state
from tessera.personalization.state.sqlite import SQLiteState
from tessera.runtime import Runtime

router = APIRouter(tags=["personalization"])
T = TypeVar("T")

BODY_LIMIT = 256 * 1024


class PreviewRequest(Model):
    rule: Rule
    sample: int = Field(default=10_000, ge=1, le=1_000_000)
    """Evaluate over at most this many profiles; the size is extrapolated from them."""
    examples: int = Field(default=10, ge=0, le=100)


def personalization(runtime: Runtime) -> Personalization:
    """One per process, built on first use (the decision models load once)."""
    found: Personalization | None = getattr(runtime, "_personalization", None)
    if found is None:
        state = open_state(runtime.store_url, runtime.data_dir)
        found = Personalization.load(runtime.config.personalization, runtime.store, state)
        runtime._personalization = found  # type: ignore[attr-defined]
    return found


async def _read(runtime: Runtime, fn: Callable[..., T], *args: Any) -> T:
    p = personalization(runtime)
    if runtime.store.fast_local_reads and isinstance(p.state, SQLiteState):
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _runtime(request: Request, scope: str) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, scope)
    return runtime


def _audience(runtime: Runtime, name: str, what: str = "segment") -> dict[str, Any]:
    p = personalization(runtime)
    found = p.audience(name)
    if found is None:
        known = ", ".join(p.audience_names) or "none"
        raise ApiError(404, "not_found", f"no {what} named {name!r} (known: {known})")
    return found.as_dict()


@router.get("/v1/profiles/{identifier}/segments", summary="The segments a profile is in",
            responses={200: {"model": schemas.ProfileSegments}})
async def profile_segments(identifier: str, request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    p = personalization(runtime)

    def read() -> dict[str, Any]:
        pid = _resolve(runtime, identifier)
        return {"profile_id": pid, "segments": p.segments_of(pid),
                "computed_traits": p.computed_of(pid)}

    return json_response(await _read(runtime, read))


def _decision_params(request: Request) -> tuple[str, int, bool]:
    """``channel``, ``limit`` and ``explain``, checked by hand: the decision is read at
    hundreds a second, and FastAPI's parameter machinery costs as much as the decision."""
    query = request.query_params
    errors: list[FieldError] = []
    channel = query.get("channel", "")
    if not channel:
        errors.append(FieldError("query.channel", "required: the channel to decide for, "
                                                  "e.g. contact_center"))
    limit = 3
    if "limit" in query:
        raw = query["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= 50:
            errors.append(FieldError("query.limit", "must be a whole number from 1 to 50"))
        else:
            limit = int(raw)
    explain = query.get("explain", "false").lower()
    if explain not in ("true", "false", "1", "0", "yes", "no"):
        errors.append(FieldError("query.explain", "must be true or false"))
    if errors:
        raise ApiError(400, "invalid_request", "the request is invalid", errors)
    return channel, limit, explain in ("true", "1", "yes")


@router.get("/v1/profiles/{identifier}/next-best-action",
            summary="The best actions for a profile on a channel, ranked, with reasons",
            responses={200: {"model": schemas.NextBestAction}},
            openapi_extra={"parameters": schemas.DECISION_PARAMETERS})
async def next_best_action(identifier: str, request: Request) -> Response:
    runtime = _runtime(request, "decisions:read")
    channel, limit, explain = _decision_params(request)
    p = personalization(runtime)

    def decide() -> dict[str, Any]:
        pid = _resolve(runtime, identifier)
        decision = p.decide(pid, channel, limit)
        body: dict[str, Any] = {
            "profile_id": pid,
            "channel": channel,
            "actions": [c.as_dict(i + 1) for i, c in enumerate(decision.chosen)],
        }
        if explain:
            body["rejected"] = [r.as_dict() for r in decision.rejected]
            body["ranked_out"] = decision.ranked_out
        return body

    return json_response(await _read(runtime, decide))


@router.get("/v1/segments", summary="Audiences with their sizes",
            responses={200: {"model": schemas.SegmentList}})
async def list_segments(request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    return json_response({"segments": await _catalog(runtime)})


async def _catalog(runtime: Runtime) -> list[dict[str, Any]]:
    """Every audience, configured and saved, with its origin and size."""
    p = personalization(runtime)

    def read() -> list[dict[str, Any]]:
        sizes = p.sizes()
        return [c.as_dict() | {"size": sizes.get(c.audience.name, 0)} for c in p.catalog()]

    return await _read(runtime, read)


@router.get("/v1/segments/{name}", summary="One audience with its size",
            responses={200: {"model": schemas.SegmentOut}})
async def get_segment(name: str, request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    body = await _read(runtime, _audience, runtime, name)
    sizes = await _read(runtime, personalization(runtime).sizes)
    body["size"] = sizes.get(name, 0)
    return json_response(body)


@router.get("/v1/segments/{name}/members", summary="An audience's members, paged",
            responses={200: {"model": schemas.MembersPage}})
async def segment_members(
    name: str,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    runtime = _runtime(request, "segments:read")
    await _read(runtime, _audience, runtime, name)
    rows = await _read(runtime, personalization(runtime).members, name, cursor, limit + 1)
    page = rows[:limit]
    return json_response({
        "segment": name,
        "members": [{"profile_id": pid, "since": iso_time(since)} for pid, since in page],
        "next_cursor": page[-1][0] if len(rows) > limit and page else None,
    })


def _invalid(exc: ValidationError) -> ApiError:
    errors = [FieldError(".".join(str(p) for p in e["loc"]) or "(body)",
                         "unknown field" if e["type"] == "extra_forbidden" else e["msg"])
              for e in exc.errors()]
    return ApiError(400, "invalid_rule", "the preview request is invalid", errors)


@router.post("/v1/segments/preview",
             summary="How many existing profiles a rule would select, before saving it",
             responses={200: {"model": schemas.PreviewOut}}, openapi_extra=schemas.PREVIEW_BODY)
async def preview_segment(request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    raw = await request.body()
    if len(raw) > BODY_LIMIT:
        raise ApiError(413, "payload_too_large", f"the body is larger than {BODY_LIMIT} bytes")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_rule", "the body must be a JSON object with a 'rule'",
                       [FieldError("(body)", "must be a JSON object")])
    try:
        req = PreviewRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    p = personalization(runtime)
    known = set(await _read(runtime, lambda: p.audience_names))
    unknown = sorted(req.rule.audiences() - known)
    if unknown:
        raise ApiError(400, "invalid_rule", "the rule refers to unknown audiences",
                       [FieldError("rule", f"no audience named {n!r}") for n in unknown])
    computed = {t.name for t in runtime.config.personalization.computed_traits}
    for r in req.rule.walk():
        head, _, rest = (r.path or "").partition(".")
        if head == "computed" and rest not in computed:
            raise ApiError(400, "invalid_rule", "the rule refers to an unknown computed trait",
                           [FieldError("rule", f"no computed trait named {rest!r}")])
    result = await asyncio.to_thread(p.preview, req.rule, req.sample, req.examples)
    return json_response(result.as_dict())


# -- saved audiences: /v1/audiences --------------------------------------------------------


@router.post("/v1/audiences", status_code=201,
             summary="Save an audience (create, or replace one saved before)",
             responses={200: {"model": schemas.AudienceOut, "description": "Replaced"},
                        201: {"model": schemas.AudienceOut, "description": "Created"}},
             openapi_extra=schemas.AUDIENCE_BODY)
async def save_audience(request: Request) -> Response:
    runtime = _runtime(request, "admin")
    body: Any = parse_json(await read_body(request, BODY_LIMIT))
    p = personalization(runtime)
    try:
        saved, created = await asyncio.to_thread(
            audiences.save, runtime.config.personalization, p.state, body)
    except audiences.AudienceRejected as exc:
        raise ApiError(400, "invalid_audience", exc.message, exc.errors) from None
    except audiences.AudienceConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    finally:
        p.forget_saved()
    sizes = await _read(runtime, p.sizes)
    return json_response(saved.as_dict() | {"size": sizes.get(saved.audience.name, 0)},
                         201 if created else 200)


@router.get("/v1/audiences", summary="Every audience, configured and saved, with its origin",
            responses={200: {"model": schemas.AudienceList}})
async def list_audiences(request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    return json_response({"audiences": await _catalog(runtime)})


@router.get("/v1/audiences/{name}", summary="One audience with its origin and size",
            responses={200: {"model": schemas.AudienceOut}})
async def get_audience(name: str, request: Request) -> Response:
    runtime = _runtime(request, "segments:read")
    body = await _read(runtime, _audience, runtime, name, "audience")
    sizes = await _read(runtime, personalization(runtime).sizes)
    body["size"] = sizes.get(name, 0)
    return json_response(body)


@router.delete("/v1/audiences/{name}", status_code=204,
               summary="Delete a saved audience (its members exit, reason deleted)")
async def delete_audience(name: str, request: Request) -> Response:
    runtime = _runtime(request, "admin")
    p = personalization(runtime)
    try:
        await asyncio.to_thread(audiences.delete, runtime.config.personalization, p.state, name)
    except audiences.AudienceConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except audiences.AudienceNotFound:
        known = ", ".join(p.audience_names) or "none"
        raise ApiError(404, "not_found", f"no audience named {name!r} (known: {known})"
                       ) from None
    finally:
        p.forget_saved()
    return Response(status_code=204)
