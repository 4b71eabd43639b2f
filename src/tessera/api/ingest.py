"""Ingest: CloudEvents 1.0 at ``/v1/events`` and the Segment Tracking API at ``/v1/*``.

A request is answered 2xx only after its events are durable on the bus. A
request with any invalid event is refused whole (400) with every bad event's
index, field and reason, so nothing is ever half-accepted or dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.api.auth import credentials, source_for
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.api.models import CloudEventsAccepted, SegmentAccepted
from tessera.bus.base import BusUnavailable, Message
from tessera.catalog.gate import admit
from tessera.events import EVENTS_TOPIC, cloudevents, segment
from tessera.events.envelope import Event
from tessera.events.errors import FieldError, InvalidEvents
from tessera.observability.metrics import record_ingest
from tessera.runtime import Runtime

MAX_CLOUDEVENTS_BODY = 5 * 1024 * 1024
MAX_CLOUDEVENT_BYTES = 256 * 1024
MAX_BATCH_EVENTS = 5_000
RETRY_AFTER_SECONDS = "5"


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def publish(runtime: Runtime, events: list[Event]) -> tuple[int, int]:
    """Make the events durable; (stored, duplicates).

    Events carrying an erased identifier are screened out (or anonymized) first,
    per ``privacy.suppression``; dropped ones count as accepted: the sender did
    nothing wrong, and they must not resend them."""
    if runtime.suppression.due():  # a read of the trust records: not on the event loop
        await asyncio.to_thread(runtime.suppression.digests)
    screened = runtime.suppression.screen(events)
    dropped = len(events) - len(screened)
    try:
        stored = await runtime.bus.publish(
            EVENTS_TOPIC, [Message(e.uid, e.partition_key, e.to_json()) for e in screened]
        )
    except BusUnavailable as exc:
        raise ApiError(
            503,
            "unavailable",
            f"events cannot be stored right now: {exc}",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    new = sum(stored)
    record_ingest(screened, new, len(stored) - new)
    return new + dropped, len(stored) - new


router = APIRouter(tags=["ingest"])


@router.post(
    "/v1/events", status_code=202, summary="Ingest CloudEvents (structured, binary, batch)",
    response_model=CloudEventsAccepted,
)
async def ingest_cloudevents(request: Request) -> Response:
    runtime = runtime_of(request)
    source = source_for(runtime, credentials(request))
    content_type = request.headers.get("content-type") or ""
    media = content_type.split(";")[0].strip().lower()
    body = await read_body(request, MAX_CLOUDEVENTS_BODY)
    received = time.time()
    try:
        if media == cloudevents.STRUCTURED:
            if len(body) > MAX_CLOUDEVENT_BYTES:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"an event may be at most {MAX_CLOUDEVENT_BYTES} bytes",
                )
            events = cloudevents.parse_structured(
                parse_json(body), source, received, runtime.extractor
            )
        elif media == cloudevents.BATCH:
            raw = parse_json(body)
            if isinstance(raw, list) and len(raw) > MAX_BATCH_EVENTS:
                raise ApiError(
                    413, "payload_too_large", f"a batch may hold at most {MAX_BATCH_EVENTS} events"
                )
            events = cloudevents.parse_batch(raw, source, received, runtime.extractor)
        elif any(h.startswith("ce-") for h in request.headers):
            if len(body) > MAX_CLOUDEVENT_BYTES:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"an event may be at most {MAX_CLOUDEVENT_BYTES} bytes",
                )
            events = cloudevents.parse_binary(
                request.headers, body, content_type or None, source, received, runtime.extractor
            )
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"unsupported Content-Type {content_type!r}: send {cloudevents.STRUCTURED}, "
                f"{cloudevents.BATCH}, or binary mode with ce-* headers",
            )
        ids = [e.id for e in events]
        events, held = await admit(runtime, source, events, media == cloudevents.BATCH)
    except InvalidEvents as exc:
        raise ApiError(
            400,
            "invalid_events",
            f"{len({e.index for e in exc.errors})} event(s) invalid; nothing accepted",
            exc.errors,
        ) from None
    stored, duplicates = await publish(runtime, events)
    return json_response({"accepted": stored, "duplicates": duplicates, "ids": ids, **held}, 202)


async def _segment(request: Request, call: str | None) -> Response:
    runtime = runtime_of(request)
    key = credentials(request)
    # a key in the header is checked before the body is read; one in the body, after
    source = source_for(runtime, key) if key is not None else None
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type and content_type not in ("application/json", "text/plain"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported Content-Type {content_type!r}: send application/json",
        )
    body = await read_body(request, segment.MAX_REQUEST_BYTES)
    raw = parse_json(body)
    if not isinstance(raw, dict):
        raise ApiError(
            400,
            "invalid_body",
            "the body must be a JSON object",
            [FieldError("(body)", "must be a JSON object")],
        )
    if source is None:
        body_key = raw.get("writeKey")
        source = source_for(runtime, body_key if isinstance(body_key, str) else None)
    received = time.time()
    messages: list[Any]
    if call is None:
        batch = raw.get("batch")
        if not isinstance(batch, list):
            raise ApiError(
                400,
                "invalid_events",
                "batch must be an array of messages",
                [FieldError("batch", "is required and must be an array")],
            )
        messages = batch
        shared_context = raw.get("context") if isinstance(raw.get("context"), dict) else None
        indexed = True
    else:
        messages = [raw]
        shared_context = None
        indexed = False
    errors: list[FieldError] = []
    for index, msg in enumerate(messages):
        position = index if indexed else None
        if isinstance(msg, dict) and len(orjson.dumps(msg)) > segment.MAX_EVENT_BYTES:
            errors.append(
                FieldError("(message)", f"is larger than {segment.MAX_EVENT_BYTES} bytes", position)
            )
            continue
        errors.extend(segment.check_message(msg, position, call))
    if errors:
        too_big = all(e.reason.startswith("is larger than") for e in errors)
        status = 413 if too_big else 400
        raise ApiError(
            status,
            "invalid_events" if status == 400 else "payload_too_large",
            f"{len({e.index for e in errors})} message(s) invalid; nothing accepted",
            errors,
        )
    events = []
    for msg in messages:
        if shared_context and "context" not in msg:
            msg = {**msg, "context": shared_context}
        events.append(segment.to_event(msg, call, source, received, runtime.extractor))
    try:
        events, held = await admit(runtime, source, events, indexed)
    except InvalidEvents as exc:
        raise ApiError(400, "invalid_events", f"{len({e.index for e in exc.errors})} message(s) "
                       "invalid; nothing accepted", exc.errors) from None
    stored, duplicates = await publish(runtime, events)
    return json_response({"success": True, "accepted": stored, "duplicates": duplicates, **held})


@router.post("/v1/batch", summary="Segment-spec batch", response_model=SegmentAccepted)
async def segment_batch(request: Request) -> Response:
    return await _segment(request, None)


def _single(call: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return await _segment(request, call)

    endpoint.__name__ = f"segment_{call}"
    return endpoint


for _call in segment.CALLS:
    router.add_api_route(
        f"/v1/{_call}", _single(_call), methods=["POST"], summary=f"Segment-spec {_call}",
        response_model=SegmentAccepted,
    )
