"""Per-request context: a request id in every log line, latency and rejection metrics.

A pure ASGI middleware (no extra task per request). The request id is the
caller's ``X-Request-ID`` when it is a sane token, else a new one; it is bound
to structlog's context variables for the whole request, so every log line the
request causes carries it, and returned in the ``X-Request-ID`` header.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.observability import metrics, tracing

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = structlog.get_logger("tessera.http")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values), else ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        endpoint_token = metrics.current_endpoint.set(scope.get("path", ""))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        span: Any = tracing.start_request_span(scope, request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_of(scope)
            method = scope.get("method", "")
            metrics.HTTP_LATENCY.labels(method, route, str(status)).observe(elapsed)
            if route in metrics.INGEST_ROUTES and status >= 400:
                metrics.INGEST_REJECTED.labels(route, str(status)).inc()
            tracing.end_request_span(span, route, status)
            log.info(
                "http.request",
                method=method,
                path=scope.get("path", ""),
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            metrics.current_endpoint.reset(endpoint_token)
            structlog.contextvars.reset_contextvars(**tokens)
