"""``/v1/catalog``, ``/v1/catalog/violations``, the quarantine, ``/v1/asyncapi.json``.

Reading the catalog, its schemas and the AsyncAPI document needs a key with
``profiles:read`` (or ``admin``); the quarantine holds whole events (personal
data), so listing and releasing it needs ``admin``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.catalog.asyncapi import asyncapi_document
from tessera.catalog.gate import gate_of, release
from tessera.catalog.model import EventType
from tessera.catalog.resolver import ResolveError, Resolver
from tessera.events.errors import FieldError
from tessera.runtime import Runtime

MAX_BODY = 1024 * 1024

router = APIRouter(tags=["catalog"])


def _runtime(request: Request, scope: str) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, scope)
    return runtime


def event_json(event: EventType) -> dict[str, Any]:
    body = event.model_dump(by_alias=True, mode="json")
    for v, version in zip(body["versions"], event.versions, strict=True):
        v["dataschema"] = event.dataschema_of(version)
    return body


def _events(runtime: Runtime) -> list[EventType]:
    gate = gate_of(runtime)
    return gate.catalog.events if gate is not None else []


@router.get("/v1/catalog", summary="The event catalog")
async def catalog(request: Request) -> Response:
    runtime = _runtime(request, "profiles:read")
    cfg = runtime.config.catalog
    sources = {s.name: {"validation": s.validation or (cfg.validation if cfg else None),
                        "unknown_types": s.unknown_types or (cfg.unknown_types if cfg else None)}
               for s in runtime.config.sources} if cfg else {}
    return json_response({"event_types": [event_json(e) for e in _events(runtime)],
                          "sources": sources})


@router.get("/v1/catalog/types/{event_type}", summary="One event type")
async def catalog_type(request: Request, event_type: str) -> Response:
    runtime = _runtime(request, "profiles:read")
    gate = gate_of(runtime)
    found = gate.catalog.get(event_type) if gate else None
    if found is None:
        raise ApiError(404, "not_found", f"{event_type!r} is not in the catalog")
    return json_response(event_json(found))


@router.get("/v1/catalog/types/{event_type}/versions/{version}",
            summary="One schema version of an event type's data")
async def catalog_schema(request: Request, event_type: str, version: int) -> Response:
    runtime = _runtime(request, "profiles:read")
    gate = gate_of(runtime)
    found = gate.catalog.version(event_type, version) if gate else None
    if found is None:
        raise ApiError(404, "not_found", f"{event_type!r} has no schema version {version}")
    return json_response(found.schema_)


@router.get("/v1/catalog/violations", summary="Violations by event type and reason")
async def violations(request: Request) -> Response:
    runtime = _runtime(request, "profiles:read")
    gate = gate_of(runtime)
    rows = await asyncio.to_thread(gate.log.summary) if gate and gate.log else []
    return json_response({"violations": rows})


@router.get("/v1/catalog/quarantine", summary="Quarantined events, oldest first")
async def quarantine(request: Request, type: str | None = None, limit: int = 100,
                     all: bool = False) -> Response:
    runtime = _runtime(request, "admin")
    gate = gate_of(runtime)
    if gate is None or gate.log is None:
        return json_response({"events": []})
    found = await asyncio.to_thread(gate.log.quarantined, type, all, max(1, min(limit, 1000)))
    return json_response({"events": [q.as_dict() for q in found]})


@router.post("/v1/catalog/quarantine/release",
             summary="Validate quarantined events again and process the valid ones")
async def quarantine_release(request: Request) -> Response:
    runtime = _runtime(request, "admin")
    raw = await read_body(request, MAX_BODY)
    body = parse_json(raw) if raw else {}  # strict JSON, 400 naming the reason
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or
                            not all(isinstance(i, str) for i in ids)):
        raise ApiError(400, "invalid_body", "ids must be a list of strings",
                       [FieldError("ids", "must be a list of strings")])
    if ids is None and not body.get("all") and body.get("type") is None:
        raise ApiError(400, "invalid_body", "give ids, a type, or all: true")
    result = await release(runtime, ids, body.get("type"))
    return json_response({"released": len(result.released), "released_uids": result.released,
                          "still_invalid": result.still_invalid})


@router.post("/v1/catalog/resolve",
             summary="The fat form of a notification event (fetched from its owner)")
async def resolve(request: Request) -> Response:
    runtime = _runtime(request, "profiles:read")
    gate = gate_of(runtime)
    event = parse_json(await read_body(request, MAX_BODY))
    if not isinstance(event, dict):
        raise ApiError(400, "invalid_body", "send one CloudEvent (a JSON object)")
    if gate is None:
        return json_response(event)
    resolver: Resolver | None = getattr(request.app.state, "catalog_resolver", None)
    if resolver is None:
        resolver = request.app.state.catalog_resolver = Resolver(gate.catalog)
    try:
        return json_response(await resolver.fatten(event))
    except ResolveError as exc:
        raise ApiError(502, "resolve_failed", str(exc)) from None


@router.get("/v1/asyncapi.json", summary="AsyncAPI 3.0 document of the event catalog")
async def asyncapi(request: Request) -> Response:
    runtime = _runtime(request, "profiles:read")
    base = str(request.base_url).rstrip("/")
    return json_response(asyncapi_document(_events(runtime), server_url=base))
