"""Prometheus metrics of ingest, processing and delivery.

Counters and histograms are updated where the work happens, once per request
or per batch (never per event on the ingest path). Gauges that describe the
state of the bus (consumer lag, pending dead letters) are computed when
``/metrics`` is scraped, from the bus itself, so they are right whichever
process did the work.

``tessera serve`` runs the API and the worker as two processes. Both write
their counters to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode; ``tessera serve`` points it at ``<data dir>/metrics`` and
empties it at start), and the API's ``/metrics`` adds them up, so one scrape
target shows both. A worker started on its own (``tessera worker``) can serve
its metrics on ``--metrics-port`` instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

INGEST_EVENTS = Counter(
    "tessera_ingest_events",
    "Events taken by ingest and made durable: accepted (new) or duplicate (already stored).",
    ["endpoint", "source", "outcome"],
)
INGEST_REJECTED = Counter(
    "tessera_ingest_rejected_requests",
    "Ingest requests refused as a whole (nothing accepted), by endpoint and HTTP status.",
    ["endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "tessera_http_request_duration_seconds",
    "HTTP request latency, by method, route template and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
PROCESSED = Counter(
    "tessera_processing_events",
    "Events handled by a processor: applied, duplicate (already applied), retried or "
    "dead_lettered.",
    ["group", "outcome"],
)
BATCH_LATENCY = Histogram(
    "tessera_processing_batch_duration_seconds",
    "Time to apply one batch of events to the store.",
    ["group"],
    buckets=LATENCY_BUCKETS,
)
PROCESSING_DELAY = Histogram(
    "tessera_processing_delay_seconds",
    "From ingest to applied: observed once per batch, for the batch's oldest event.",
    ["group"],
    buckets=DELAY_BUCKETS,
)

INGEST_ROUTES = frozenset(
    ["/v1/events", "/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen",
     "/v1/group", "/v1/alias"]
)

current_endpoint: ContextVar[str] = ContextVar("tessera_endpoint", default="")
"""The request path being served (set by the request middleware)."""

WATCHED_GROUPS: list[tuple[str, str]] = [("events", "profiles")]
"""(topic, consumer group) pairs whose lag ``/metrics`` and the console report.

Processors added later register theirs with :func:`watch_group`.
"""


def watch_group(topic: str, group: str) -> None:
    if (topic, group) not in WATCHED_GROUPS:
        WATCHED_GROUPS.append((topic, group))


def watched_groups(config: Any) -> list[tuple[str, str]]:
    """The groups whose lag ``/metrics``, ``/v1/consumers`` and the console report.

    Processors run in worker processes of their own, so the API process learns their
    groups from the configuration rather than from what registered in this process.
    """
    watched = list(WATCHED_GROUPS)
    extra: list[tuple[str, str]] = []
    if config.personalization.enabled:
        from tessera.personalization.service import consumer_groups

        extra += consumer_groups()
    if config.journeys:
        from tessera.journeys.engine import GROUP, TOPICS

        extra += [(topic, GROUP) for topic in TOPICS]
    return watched + [group for group in extra if group not in watched]


class IngestTotals:
    """Plain in-process totals, for rates shown in the console without parsing metrics."""

    __slots__ = ("accepted", "duplicates")

    def __init__(self) -> None:
        self.accepted = 0
        self.duplicates = 0


INGEST_TOTALS = IngestTotals()

IngestListener = Callable[[Sequence[Any]], None]
_ingest_listeners: list[IngestListener] = []


def on_ingest(listener: IngestListener) -> None:
    """Call ``listener(events)`` after every durable ingest (the console's live tail)."""
    if listener not in _ingest_listeners:
        _ingest_listeners.append(listener)


def record_ingest(events: Sequence[Any], accepted: int, duplicates: int) -> None:
    """One ingest request's events are durable. Constant cost per request."""
    source = events[0].source_name if events else ""
    endpoint = current_endpoint.get() or "other"
    if accepted:
        INGEST_EVENTS.labels(endpoint, source, "accepted").inc(accepted)
    if duplicates:
        INGEST_EVENTS.labels(endpoint, source, "duplicate").inc(duplicates)
    INGEST_TOTALS.accepted += accepted
    INGEST_TOTALS.duplicates += duplicates
    for listener in _ingest_listeners:
        listener(events)


def record_batch(group: str, applied: int, duplicates: int, seconds: float,
                 oldest_received_at: float | None) -> None:
    """One batch applied by a processor."""
    if applied:
        PROCESSED.labels(group, "applied").inc(applied)
    if duplicates:
        PROCESSED.labels(group, "duplicate").inc(duplicates)
    BATCH_LATENCY.labels(group).observe(seconds)
    if oldest_received_at is not None:
        PROCESSING_DELAY.labels(group).observe(max(0.0, time.time() - oldest_received_at))


def record_outcome(group: str, outcome: str, n: int = 1) -> None:
    """``retried`` or ``dead_lettered`` events of a processor."""
    PROCESSED.labels(group, outcome).inc(n)


# -- the scrape ---------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The shared metrics directory, if this process writes its metrics there."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:  # chosen at import: this process is on its own
        return None
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


class _Snapshot:
    """A collector of values read once per scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


class _Delegate:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


async def bus_gauges(bus: Any, groups: Sequence[tuple[str, str]] | None = None) -> list[Metric]:
    """Consumer lag per group and pending dead letters per group, read from the bus now."""
    lag = GaugeMetricFamily(
        "tessera_consumer_lag",
        "Messages of a topic a consumer group has not acknowledged yet.",
        labels=["topic", "group"],
    )
    dead = GaugeMetricFamily(
        "tessera_dead_letters",
        "Dead letters not replayed yet, by consumer group.",
        labels=["group"],
    )
    up = GaugeMetricFamily("tessera_bus_up", "1 if the bus answered this scrape.")
    watched = list(groups if groups is not None else WATCHED_GROUPS)
    try:
        lags = await asyncio.wait_for(
            asyncio.gather(*(bus.lag(topic, group) for topic, group in watched)), 5.0
        )
        letters = await asyncio.wait_for(bus.dead_letters(None), 5.0)
    except Exception:
        up.add_metric([], 0)
        return [up]
    for (topic, group), value in zip(watched, lags, strict=True):
        lag.add_metric([topic, group], float(value))
    per_group: dict[str, int] = {group: 0 for _, group in watched}
    for letter in letters:
        per_group[letter.group] = per_group.get(letter.group, 0) + 1
    for group, count in sorted(per_group.items()):
        dead.add_metric([group], float(count))
    up.add_metric([], 1)
    return [lag, dead, up]


def exposition(extra: list[Metric]) -> bytes:
    """The text exposition: this process (or every process, in multiprocess mode) and ``extra``."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Delegate(REGISTRY))
    registry.register(_Snapshot(extra))
    return generate_latest(registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
