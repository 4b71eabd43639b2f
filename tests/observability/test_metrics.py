"""Prometheus metrics, request ids in logs, and tracing, with the app in-process."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY

from tessera.api.app import create_app
from tessera.config import default_config
from tessera.observability import tracing
from tessera.runtime import Runtime
from tests.console.scenario import put_dead_letters

WRITE = {"Authorization": "Bearer wk_web_123", "Content-Type": "application/cloudevents+json"}
BATCH = {"Authorization": "Bearer wk_web_123",
         "Content-Type": "application/cloudevents-batch+json"}


def event(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"m-{i}", "source": "web",
            "type": "com.example.web.page_viewed", "data": {"userId": f"u-{i}"}}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in the exposition")


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime(default_config(), tmp_path / "data")
    application = create_app(runtime)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                          base_url="http://tessera.test") as client,
    ):
        yield client, runtime


async def test_ingest_counts_accepted_duplicates_and_rejections(app: Any) -> None:
    client, _ = app
    labels = {"endpoint": "/v1/events", "source": "web"}
    accepted = sample("tessera_ingest_events_total", outcome="accepted", **labels)
    duplicates = sample("tessera_ingest_events_total", outcome="duplicate", **labels)
    rejected = sample("tessera_ingest_rejected_requests_total", endpoint="/v1/events",
                      status="400")
    unauthorized = sample("tessera_ingest_rejected_requests_total", endpoint="/v1/events",
                          status="401")

    assert (await client.post("/v1/events", json=[event(i) for i in range(3)],
                              headers=BATCH)).status_code == 202
    assert (await client.post("/v1/events", json=event(0), headers=WRITE)).status_code == 202
    assert (await client.post("/v1/events", json={"id": "x"}, headers=WRITE)).status_code == 400
    assert (await client.post("/v1/events", json=event(9),
                              headers={**WRITE, "Authorization": "Bearer nope"})
            ).status_code == 401
    segment = sample("tessera_ingest_events_total", endpoint="/v1/track", source="web",
                     outcome="accepted")
    track = {"userId": "u-1", "event": "Clicked", "messageId": "seg-1"}
    assert (await client.post("/v1/track", json=track, headers=WRITE | {
        "Content-Type": "application/json"})).status_code == 200

    assert sample("tessera_ingest_events_total", outcome="accepted", **labels) == accepted + 3
    assert sample("tessera_ingest_events_total", outcome="duplicate", **labels) == duplicates + 1
    assert sample("tessera_ingest_rejected_requests_total", endpoint="/v1/events",
                  status="400") == rejected + 1
    assert sample("tessera_ingest_rejected_requests_total", endpoint="/v1/events",
                  status="401") == unauthorized + 1
    assert sample("tessera_ingest_events_total", endpoint="/v1/track", source="web",
                  outcome="accepted") == segment + 1


async def test_request_latency_is_labelled_by_route_template(app: Any) -> None:
    client, _ = app
    labels = {"method": "GET", "route": "/v1/profiles/{identifier}", "status": "401"}
    before = sample("tessera_http_request_duration_seconds_count", **labels)
    await client.get("/v1/profiles/email:a@b.example")
    await client.get("/v1/profiles/email:c@d.example")
    assert sample("tessera_http_request_duration_seconds_count", **labels) == before + 2
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    before = sample("tessera_http_request_duration_seconds_count", **unmatched)
    await client.get("/no/such/page/42")
    assert sample("tessera_http_request_duration_seconds_count", **unmatched) == before + 1


async def test_scrape_reports_lag_dead_letters_and_processing(app: Any) -> None:
    client, runtime = app
    await put_dead_letters(runtime.bus)  # one failed event (dead), one poison (pending)
    assert (await client.post("/v1/events", json=[event(i) for i in range(4)],
                              headers=BATCH)).status_code == 202
    text = (await client.get("/metrics")).text
    assert scraped(text, "tessera_consumer_lag", topic="events", group="profiles") == 5
    assert scraped(text, "tessera_dead_letters", group="profiles") == 1
    assert scraped(text, "tessera_bus_up") == 1

    applied = sample("tessera_processing_events_total", group="profiles", outcome="applied")
    dead = sample("tessera_processing_events_total", group="profiles", outcome="dead_lettered")
    batches = sample("tessera_processing_batch_duration_seconds_count", group="profiles")
    await runtime.worker().run_until_idle()
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert scraped(text, "tessera_consumer_lag", topic="events", group="profiles") == 0
    assert scraped(text, "tessera_dead_letters", group="profiles") == 2
    assert sample("tessera_processing_events_total", group="profiles",
                  outcome="applied") == applied + 4
    assert sample("tessera_processing_events_total", group="profiles",
                  outcome="dead_lettered") == dead + 1
    assert sample("tessera_processing_batch_duration_seconds_count", group="profiles") > batches
    assert "tessera_processing_delay_seconds_bucket" in text


async def test_request_ids_are_returned_and_kept_from_callers(app: Any) -> None:
    client, _ = app
    generated = await client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    kept = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert kept.headers["x-request-id"] == "trace-abc.123"
    replaced = await client.get("/healthz", headers={"X-Request-ID": "x" * 300})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    logs: list[dict[str, Any]] = []
    saved = structlog.get_config()

    def keep(_: Any, __: str, event: dict[str, Any]) -> Any:
        logs.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars,
                                    structlog.processors.add_log_level, keep],
                        cache_logger_on_first_use=False)
    try:
        yield logs
    finally:
        structlog.configure(**saved)


async def test_log_lines_carry_the_request_id_and_event_ids(
    app: Any, captured_logs: list[dict[str, Any]]
) -> None:
    client, runtime = app
    await put_dead_letters(runtime.bus)
    response = await client.post("/v1/events", json=event(1), headers=WRITE)
    request_id = response.headers["x-request-id"]
    [line] = [x for x in captured_logs if x["event"] == "http.request"]
    assert line["request_id"] == request_id
    assert line["route"] == "/v1/events" and line["status"] == 202
    assert "duration_ms" in line
    assert structlog.contextvars.get_contextvars() == {}

    await runtime.worker().run_until_idle()
    [dead] = [x for x in captured_logs if x["event"] == "worker.dead_lettered"]
    assert dead["message_id"] == "poison-1"


async def test_tracing_spans_requests_and_batches(app: Any) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    client, runtime = app
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    try:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = await client.post("/v1/events", json=event(1),
                                     headers={**WRITE, "traceparent": parent})
        assert response.status_code == 202
        await runtime.worker().run_until_idle()
    finally:
        tracing.setup_tracing("off")
    spans = exporter.get_finished_spans()
    [request] = [s for s in spans if s.name == "POST /v1/events"]
    assert request.attributes["http.route"] == "/v1/events"
    assert request.attributes["http.status_code"] == 202
    assert request.attributes["tessera.request_id"] == response.headers["x-request-id"]
    assert format(request.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    batches = [s for s in spans if s.name == "process batch"]
    assert batches and batches[0].attributes["tessera.group"] == "profiles"
    assert not tracing.enabled()


def test_tracing_refuses_an_unknown_mode() -> None:
    with pytest.raises(RuntimeError, match="otlp, console or off"):
        tracing.setup_tracing("carrier-pigeon")
    assert not tracing.enabled()
