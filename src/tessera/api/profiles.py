"""The profile API: one unified profile by any of its identifiers, in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from tessera.api.auth import require_scope
from tessera.api.errors import ApiError, json_response
from tessera.api.models import EventsPage, ProfileIdentities, ProfileOut
from tessera.events.envelope import iso_time
from tessera.runtime import Runtime
from tessera.store.base import Profile

router = APIRouter(tags=["profiles"])
T = TypeVar("T")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _resolve(runtime: Runtime, identifier: str) -> str:
    type_, sep, value = identifier.partition(":")
    if sep:
        if not type_ or not value:
            raise ApiError(
                400,
                "invalid_identifier",
                f"identifier {identifier!r} must be TYPE:VALUE or a profile id",
            )
        normalized = runtime.extractor.normalize(type_, value)
        if normalized is not None:
            identifier = f"{type_}:{normalized}"
    pid = runtime.store.resolve(identifier)
    if pid is None:
        raise ApiError(404, "not_found", f"no profile has the identifier {identifier!r}")
    return pid


def profile_json(profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "created_at": iso_time(profile.created_at),
        "updated_at": iso_time(profile.updated_at),
        "event_count": profile.event_count,
        "traits": {
            name: {"value": t.value, "source": t.source, "time": iso_time(t.time)}
            for name, t in profile.traits.items()
        },
        "identities": [
            {
                "type": i.type,
                "value": i.value,
                "source": i.source,
                "linked_at": iso_time(i.linked_at),
                "event_uid": i.event_uid,
                "reason": i.reason,
            }
            for i in profile.identities
        ],
        "merged_from": [
            {
                "profile_id": m.merged,
                "event_uid": m.event_uid,
                "at": iso_time(m.at),
                "reason": m.reason,
            }
            for m in profile.merged_from
        ],
    }


def _load(runtime: Runtime, identifier: str) -> Profile:
    pid = _resolve(runtime, identifier)
    profile = runtime.store.get_profile(pid)
    if profile is None:  # merged away between the two reads
        pid = _resolve(runtime, identifier)
        profile = runtime.store.get_profile(pid)
    if profile is None:
        raise ApiError(404, "not_found", f"no profile has the identifier {identifier!r}")
    return profile


async def _read(runtime: Runtime, fn: Callable[..., T], *args: Any) -> T:
    """Run a store read: inline when the store is a local file (a fraction of a
    millisecond, cheaper than a thread hop), in a thread when it goes over a network."""
    if runtime.store.fast_local_reads:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


@router.get("/v1/profiles/{identifier}", summary="A unified profile by any identifier",
            response_model=ProfileOut)
async def get_profile(identifier: str, request: Request) -> Response:
    runtime = _runtime(request)
    require_scope(runtime, request, "profiles:read")
    profile = await _read(runtime, _load, runtime, identifier)
    return json_response(profile_json(profile))


@router.get("/v1/profiles/{identifier}/identities", summary="A profile's identity links",
            response_model=ProfileIdentities)
def get_identities(identifier: str, request: Request) -> Response:
    runtime = _runtime(request)
    require_scope(runtime, request, "profiles:read")
    body = profile_json(_load(runtime, identifier))
    return json_response(
        {
            "profile_id": body["id"],
            "identities": body["identities"],
            "merged_from": body["merged_from"],
        }
    )


@router.get("/v1/profiles/{identifier}/events", summary="A profile's timeline, newest first",
            response_model=EventsPage)
def get_events(
    identifier: str,
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Response:
    runtime = _runtime(request)
    require_scope(runtime, request, "profiles:read")
    pid = _resolve(runtime, identifier)
    before = None
    if cursor:
        stamp, sep, uid = cursor.partition("_")
        try:
            if not sep or not uid:
                raise ValueError
            before = (float(stamp), uid)
        except ValueError:
            raise ApiError(
                400, "invalid_cursor", "cursor must be a next_cursor value from a previous page"
            ) from None
    entries = runtime.store.timeline(pid, limit + 1, before)
    page = entries[:limit]
    next_cursor = (
        f"{page[-1].time!r}_{page[-1].event_uid}" if len(entries) > limit and page else None
    )
    return json_response(
        {
            "profile_id": pid,
            "events": [e.event for e in page],
            "next_cursor": next_cursor,
        }
    )
