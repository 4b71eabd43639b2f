"""OpenTelemetry tracing, off unless asked for.

``TESSERA_TRACING=otlp`` exports spans with OTLP over HTTP (configured by the
standard ``OTEL_EXPORTER_OTLP_*`` variables; needs ``pip install
'tessera-cdp[tracing]'``); ``TESSERA_TRACING=console`` prints them. Spans: one
per HTTP request (``http.route``, ``http.status_code``, ``tessera.request_id``)
and one per processed batch (``tessera.group``, ``tessera.batch_size``).
An incoming W3C ``traceparent`` header continues the caller's trace.

When tracing is off every function here returns at once.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.types import Scope

ENV = "TESSERA_TRACING"

_tracer: Any = None


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(mode: str | None = None, exporter: Any = None) -> bool:
    """Turn tracing on per ``mode`` (default: ``$TESSERA_TRACING``); True if it is on.

    ``exporter`` (a span exporter) overrides the mode's exporter (tests).
    """
    global _tracer
    mode = (mode if mode is not None else os.environ.get(ENV, "")).strip().lower()
    if not mode or mode in ("0", "off", "none", "false"):
        _tracer = None
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise RuntimeError(
            f"{ENV}={mode} needs the OpenTelemetry SDK: pip install 'tessera-cdp[tracing]'"
        ) from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tessera")})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif mode == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError(
                f"{ENV}=otlp needs the OTLP exporter: pip install 'tessera-cdp[tracing]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise RuntimeError(f"{ENV} must be otlp, console or off, not {mode!r}")
    _tracer = provider.get_tracer("tessera")
    return True


def start_request_span(scope: Scope, request_id: str) -> Any:
    if _tracer is None:
        return None
    from opentelemetry import context, propagate, trace

    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers") or ()
        if name in (b"traceparent", b"tracestate")
    }
    parent = propagate.extract(carrier) if carrier else None
    span = _tracer.start_span(
        f"{scope.get('method', '')} {scope.get('path', '')}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.method": scope.get("method", ""), "tessera.request_id": request_id},
    )
    token = context.attach(trace.set_span_in_context(span))
    return (span, token)


def end_request_span(handle: Any, route: str, status: int) -> None:
    if handle is None:
        return
    from opentelemetry import context, trace

    span, token = handle
    span.update_name(f"{span.attributes.get('http.method', '')} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.status_code", status)
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    context.detach(token)


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def batch_span(group: str, size: int) -> Any:
    """A context manager spanning one processed batch (a no-op when tracing is off)."""
    if _tracer is None:
        return _NoSpan()
    return _tracer.start_as_current_span(
        "process batch", attributes={"tessera.group": group, "tessera.batch_size": size}
    )
