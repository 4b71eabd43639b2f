"""``POST /v1/imports`` and ``GET /v1/imports/{id}`` (admin scope).

Two ways to start an import:

* JSON: ``{"path": "/data/crm.csv", "source": "crm", "mapping": {...}}`` for a
  file the server can read (``format``, ``mode``, ``log``, ``batch_size`` optional);
* upload: the file itself as the body (``Content-Type: text/csv``,
  ``application/x-ndjson`` or ``application/vnd.apache.parquet``), with
  ``?source=crm&mapping=<JSON>`` (and optionally ``&format=``); the body is
  streamed to the data directory, never held in memory.

The import runs in the background; the answer (202) names its id, and
``GET /v1/imports/{id}`` shows its progress and, at the end, its summary.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.imports.job import ImportError_, ImportJob
from tessera.imports.mapping import MappingError, parse_mapping
from tessera.runtime import Runtime

router = APIRouter(tags=["imports"])

CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/octet-stream": None,
}


class _Running:
    def __init__(self, job: ImportJob, task: asyncio.Task[Any]) -> None:
        self.job = job
        self.task = task


def _registry(request: Request) -> dict[str, _Running]:
    state = request.app.state
    if not hasattr(state, "imports"):
        state.imports = {}
    found: dict[str, _Running] = state.imports
    return found


def _job(runtime: Runtime, path: Path, body: dict[str, Any]) -> ImportJob:
    try:
        mapping = parse_mapping(body.get("mapping"), "mapping")
    except MappingError as exc:
        raise ApiError(400, "invalid_mapping", str(exc)) from None
    source = body.get("source")
    if not isinstance(source, str) or not source:
        raise ApiError(400, "invalid_request", "source is required")
    mode = body.get("mode", "direct")
    if mode not in ("direct", "bus"):
        raise ApiError(400, "invalid_request", "mode must be direct or bus")
    batch = body.get("batch_size", 5000)
    if not isinstance(batch, int) or not 1 <= batch <= 100_000:
        raise ApiError(400, "invalid_request", "batch_size must be an integer 1..100000")
    try:
        return ImportJob(
            path=path, source=source, mapping=mapping, store=runtime.store,
            processor=runtime.processor, extractor=runtime.extractor, bus=runtime.bus,
            work_dir=runtime.data_dir / "imports",
            known_sources={s.name for s in runtime.config.sources},
            fmt=body.get("format"), mode=mode, batch_size=batch,
            log_events=bool(body.get("log", True)))
    except ImportError_ as exc:
        raise ApiError(400, "invalid_import", str(exc)) from None


@router.post("/v1/imports", status_code=202, summary="Start a batch import (admin)")
async def start_import(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, "admin")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = parse_json(await read_body(request, 1024 * 1024))  # strict, 400 with the reason
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise ApiError(400, "invalid_request", "give path, source and mapping")
        path = Path(body["path"])
    elif ctype in CONTENT_TYPES:
        params = request.query_params
        try:
            mapping = orjson.loads(params.get("mapping", ""))
        except orjson.JSONDecodeError:
            raise ApiError(400, "invalid_mapping",
                           "the mapping query parameter must be JSON") from None
        fmt = params.get("format") or CONTENT_TYPES[ctype]
        if fmt is None:
            raise ApiError(400, "invalid_request", "give ?format=csv|jsonl|parquet")
        body = {"source": params.get("source"), "mapping": mapping, "format": fmt,
                "mode": params.get("mode", "direct")}
        uploads = runtime.data_dir / "imports" / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        path = uploads / f"{uuid.uuid4().hex}.{fmt}"
        with open(path, "wb") as fh:
            async for chunk in request.stream():
                await asyncio.to_thread(fh.write, chunk)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"send application/json or the file ({', '.join(CONTENT_TYPES)})")
    job = _job(runtime, path, body)
    running = _registry(request).get(job.import_id)
    if running is None or running.task.done():
        task = asyncio.create_task(job.run())
        _registry(request)[job.import_id] = _Running(job, task)
    return json_response({"import_id": job.import_id, "status": "running",
                          "status_url": f"/v1/imports/{job.import_id}"}, 202)


@router.get("/v1/imports/{import_id}", summary="An import's progress or summary (admin)")
async def import_status(import_id: str, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, "admin")
    running = _registry(request).get(import_id)
    status = "unknown"
    error = None
    summary: dict[str, Any] | None = None
    if running is not None:
        if not running.task.done():
            status = "running"
        elif running.task.exception() is not None:
            status, error = "failed", str(running.task.exception())
        checkpoint = running.job.load_checkpoint()
        summary = checkpoint.as_dict() if checkpoint else None
    else:
        file = runtime.data_dir / "imports" / f"{import_id}.checkpoint.json"
        if file.is_file() and import_id.replace("_", "").isalnum():
            summary = orjson.loads(file.read_bytes())
    if summary is None and running is None:
        raise ApiError(404, "not_found", f"no import {import_id!r}")
    if summary is not None and status != "failed":
        status = "done" if summary.get("done") else ("running" if status == "running"
                                                     else "interrupted")
    return json_response({"import_id": import_id, "status": status, "error": error,
                          "summary": summary})
