"""HTTP: data subject requests, the audit log, and the audit of every admin action.

``POST /v1/privacy/erasure`` and ``POST /v1/privacy/access`` take
``{"identifier": "type:value"}`` in the body, never in the URL, so that the
identifier does not end up in access logs. Both need the ``admin`` scope.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.api.models import AccessExport
from tessera.events.errors import FieldError
from tessera.privacy.access import export_person
from tessera.privacy.cli import entry_dict
from tessera.privacy.erasure import (
    ErasureBusy,
    InvalidIdentifier,
    erase_person,
    parse_identifier,
)
from tessera.privacy.records.base import AuditEntry
from tessera.runtime import Runtime

MAX_REQUEST_BYTES = 16 * 1024
MAX_ANY_BODY = 8 * 1024 * 1024
"""No request body of any endpoint may be larger (ingest has tighter limits of its own)."""


class SubjectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    identifier: str = Field(min_length=3, max_length=1024,
                            examples=["email:jane@example.com"],
                            description="Any identifier of the person, as ``type:value``.")


class ErrorBody(BaseModel):
    error: str
    code: str
    message: str
    errors: list[dict[str, str]] | None = None


class ErasureResult(BaseModel):
    request_id: str
    profile_found: bool
    mode: str
    profile_ids: list[str]
    identifiers: int
    events: int
    bus_messages: int
    journey_rows: int
    warehouse_rows: int
    personalization_memberships: int


class AuditRow(BaseModel):
    id: int
    at: float
    action: str
    actor: str
    target: str
    outcome: str
    details: dict[str, Any]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Invalid body or identifier", 401: "No or unknown API key",
            403: "The key lacks the admin scope", 404: "No profile has this identifier",
            413: "Body too large", 415: "Unsupported content encoding",
            429: "Rate limited (Retry-After)", 503: "Try again later (Retry-After)"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": SubjectRequest.model_json_schema()}}}}

router = APIRouter(tags=["privacy"])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _subject(request: Request, runtime: Runtime) -> tuple[str, str]:
    raw = parse_json(await read_body(request, MAX_REQUEST_BYTES))
    try:
        body = SubjectRequest.model_validate(raw)
    except ValidationError as exc:
        errors = [FieldError(".".join(str(p) for p in e["loc"]) or "(body)", e["msg"])
                  for e in exc.errors()]
        raise ApiError(400, "invalid_request", "the request is invalid", errors) from None
    try:
        return parse_identifier(runtime, body.identifier)
    except InvalidIdentifier as exc:
        raise ApiError(400, "invalid_request", f"identifier: {exc}",
                       [FieldError("identifier", str(exc))]) from None


@router.post("/v1/privacy/erasure", summary="Erase the whole resolved person",
             response_model=ErasureResult, openapi_extra=_BODY,
             responses=_errors(400, 401, 403, 413, 415, 429, 503))
async def erasure(request: Request) -> Response:
    runtime = _runtime(request)
    principal = require_scope(runtime, request, "admin")
    identifier = await _subject(request, runtime)
    try:
        report = await erase_person(runtime, identifier, principal.id)
    except ErasureBusy as exc:
        await asyncio.to_thread(runtime.records.audit, AuditEntry(
            "privacy.erasure", principal.id, time.time(), outcome="retry", details={
                "reason": str(exc)}))
        raise ApiError(503, "unavailable", f"{exc}; repeat the request",
                       headers={"Retry-After": "30"}) from None
    return json_response(report.as_dict())


@router.post("/v1/privacy/access", summary="Export everything held about the person",
             response_model=AccessExport, openapi_extra=_BODY,
             responses=_errors(400, 401, 403, 404, 413, 415, 429))
async def access(request: Request) -> Response:
    runtime = _runtime(request)
    principal = require_scope(runtime, request, "admin")
    identifier = await _subject(request, runtime)
    export = await asyncio.to_thread(export_person, runtime, identifier)
    await asyncio.to_thread(runtime.records.audit, AuditEntry(
        "privacy.access", principal.id, time.time(),
        target=export["profile_id"] if export else "(no profile)",
        outcome="ok" if export else "not_found"))
    if export is None:
        raise ApiError(404, "not_found", "no profile has this identifier")
    return json_response(export)


@router.get("/v1/audit", summary="The audit log, newest first",
            response_model=list[AuditRow], responses=_errors(400, 401, 403, 429))
async def audit_log(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=2**62, description="An entry id (paging)"),
    action: str | None = Query(None, max_length=100, description="Actions starting with this"),
) -> Response:
    runtime = _runtime(request)
    require_scope(runtime, request, "admin")
    entries = await asyncio.to_thread(runtime.records.audit_entries, limit, before, action)
    return json_response([entry_dict(e) for e in entries])


class Guard:
    """ASGI middleware: refuses any body over ``MAX_ANY_BODY`` (413), and writes an audit
    entry for every change an admin key made (method, route template, status: no path
    values, which may be identifiers). Reads pass straight through."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_ANY_BODY:
            await ApiError(413, "payload_too_large",
                           f"the body is larger than {MAX_ANY_BODY} bytes")\
                .response()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_ANY_BODY:
                raise ApiError(413, "payload_too_large",
                               f"the body is larger than {MAX_ANY_BODY} bytes")
            return message

        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, limited, sending)
        principal = scope.get("state", {}).get("principal")
        path = scope.get("path", "")
        if principal is None or not principal.allows("admin") or path.startswith("/v1/privacy/"):
            return
        route = getattr(scope.get("route"), "path", None) or "(unrouted)"
        entry = AuditEntry(f"http.{scope['method']} {route}", principal.id, time.time(),
                           target=route, outcome=str(status))
        try:
            await asyncio.to_thread(self.runtime.records.audit, entry)
        except Exception:  # the response is sent; a failed audit write must not break it
            import structlog

            structlog.get_logger("tessera.audit").error("audit.write_failed", action=entry.action)


COMMON_ERRORS = {
    "400": "Invalid request: the body names every bad field and why",
    "401": "No API key, or an unknown one",
    "403": "The key is not allowed to do this (scope, or a write key)",
    "404": "Not found",
    "413": "Body too large",
    "415": "Unsupported Content-Type or Content-Encoding",
    "429": "Rate limited; see Retry-After",
    "503": "The bus or store cannot be reached; see Retry-After",
}


def describe_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation documents the error answers any endpoint can give (authentication,
    body limits, rate limits, an unreachable backend), with their one JSON shape. FastAPI's
    422 is replaced: this API answers validation errors with 400."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ErrorBody.model_json_schema()
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            for code, text in COMMON_ERRORS.items():
                responses.setdefault(code, {"description": text, "content": body})
    return doc


def install(app: FastAPI, runtime: Runtime) -> None:
    app.include_router(router)
    app.add_middleware(Guard, runtime=runtime)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
