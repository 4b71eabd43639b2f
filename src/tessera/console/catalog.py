"""The Catalog pages: event types, their schema versions, and what broke them.

Read-only views over :mod:`tessera.catalog`: the registry built from the
configuration (:func:`tessera.catalog.gate.gate_of`, the same one ingest
validates with) and the violations log (counts by type and reason, and the
quarantined events with each problem's JSON pointer and reason). Releasing
quarantined events stays with ``tessera catalog quarantine`` and the API,
which re-validate them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.catalog.api import event_json
from tessera.catalog.gate import gate_of
from tessera.console.views import _login_redirect, _page, _session, _state
from tessera.runtime import Runtime

router = APIRouter(prefix="/console", include_in_schema=False)
QUARANTINE_SHOWN = 100


def _modes(runtime: Runtime) -> list[dict[str, str]]:
    """How each source's events are validated (its own setting, else the catalog's)."""
    cfg = runtime.config.catalog
    if cfg is None:
        return []
    return [{"source": s.name, "validation": s.validation or cfg.validation,
             "unknown_types": s.unknown_types or cfg.unknown_types,
             "own": "yes" if (s.validation or s.unknown_types) else ""}
            for s in runtime.config.sources]


def _read(runtime: Runtime, event_type: str | None) -> tuple[list[dict[str, Any]], list[Any]]:
    gate = gate_of(runtime)
    if gate is None or gate.log is None:
        return [], []
    summary = gate.log.summary()
    if event_type is not None:
        summary = [row for row in summary if row["type"] == event_type]
    return summary, gate.log.quarantined(event_type, False, QUARANTINE_SHOWN)


@router.get("/catalog")
async def catalog(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    gate = gate_of(runtime)
    summary, quarantined = await asyncio.to_thread(_read, runtime, None)
    per_type: dict[str, int] = {}
    pending: dict[str, int] = {}
    for row in summary:
        per_type[row["type"]] = per_type.get(row["type"], 0) + row["count"]
        pending[row["type"]] = row["quarantined_pending"]
    types = sorted(gate.catalog.events, key=lambda e: e.type) if gate else []
    return _page(request, "catalog.html", session, "catalog", title="Catalog",
                 configured=gate is not None, types=types, modes=_modes(runtime),
                 violations=summary, per_type=per_type, pending=pending,
                 quarantined=quarantined, shown=QUARANTINE_SHOWN)


@router.get("/catalog/types/{event_type}")
async def catalog_type(request: Request, event_type: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    gate = gate_of(runtime)
    found = gate.catalog.get(event_type) if gate else None
    if found is None:
        return _page(request, "missing.html", session, "catalog", status_code=404,
                     title="Not in the catalog",
                     why=f"{event_type!r} is not an event type of the catalog.")
    summary, quarantined = await asyncio.to_thread(_read, runtime, event_type)
    body = event_json(found)
    return _page(request, "catalog_type.html", session, "catalog", title=event_type,
                 event=found, versions=list(reversed(body["versions"])), violations=summary,
                 quarantined=quarantined, shown=QUARANTINE_SHOWN)
