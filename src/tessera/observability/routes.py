"""``GET /metrics`` and the wiring of the observability parts into the app."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from tessera.observability import metrics, tracing
from tessera.observability.middleware import RequestContextMiddleware

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: ingest, processing, lag, dead letters, latency",
    response_class=Response,
)
async def prometheus_metrics(request: Request) -> Response:
    runtime = request.app.state.runtime
    extra = await metrics.bus_gauges(runtime.bus, metrics.watched_groups(runtime.config))
    body = await asyncio.to_thread(metrics.exposition, extra)
    return Response(body, media_type=metrics.CONTENT_TYPE)


def install(app: FastAPI) -> None:
    """Add ``/metrics``, the request-context middleware and (if configured) tracing."""
    if os.environ.get(tracing.ENV) and not tracing.enabled():
        tracing.setup_tracing()
    app.add_middleware(RequestContextMiddleware)
    app.include_router(router)
