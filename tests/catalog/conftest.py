"""A configuration with an event catalog, and the app built from it in-process."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.api.app import create_app
from tessera.config import TesseraConfig, parse_config
from tessera.runtime import Runtime
from tests.api.helpers import Api

ADMIN = {"Authorization": "Bearer ak_admin_123"}
READ = {"Authorization": "Bearer rk_read_123"}
ADDRESS_CHANGED = "com.example.membership.member.address_changed"
TICKET_STATUS = "com.example.roadservice.ticket.status_changed"

MEMBER_V1 = {
    "type": "object",
    "required": ["op", "entity", "id", "after"],
    "properties": {
        "op": {"enum": ["c", "u", "d", "r"]},
        "entity": {"const": "member"},
        "id": {"type": "string"},
        "version": {"type": "integer"},
        "before": {"type": ["object", "null"]},
        "changed": {"type": "array", "items": {"type": "string"}},
        "after": {
            "type": "object",
            "required": ["member_number", "city"],
            "properties": {
                "member_number": {"type": "string"},
                "city": {"type": "string"},
                "postcode": {"type": "string", "maxLength": 10},
                "tier": {"enum": ["classic", "plus"]},
            },
        },
    },
}


def catalog_section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "validation": "enforce",
        "unknown_types": "allow",
        "events": [
            {
                "type": ADDRESS_CHANGED,
                "domain": "membership",
                "source": "membership",
                "kind": "entity_change",
                "entity": "member",
                "operation": "update",
                "versions": [{"version": 1, "schema": MEMBER_V1}],
                "identity": {"member_number": ["data.after.member_number"]},
                "pii": ["data.after.city", "data.after.postcode"],
                "traits": {"city": "data.after.city", "postcode": "data.after.postcode"},
            },
            {
                "type": TICKET_STATUS,
                "domain": "roadservice",
                "source": "roadservice",
                "kind": "process_step",
                "process": "roadside_assistance",
                "step": "status_changed",
                "identity": {"member_number": ["data.member_number"]},
                "versions": [{"version": 1, "schema": {
                    "type": "object", "required": ["instance_id", "status"],
                    "additionalProperties": False,
                    "properties": {"instance_id": {"type": "string"},
                                   "status": {"type": "string"},
                                   "member_number": {"type": "string"}}}}],
            },
            {
                "type": "Order Completed",
                "domain": "shop",
                "source": "web",
                "versions": [{"version": 1, "schema": {
                    "type": "object", "required": ["properties"],
                    "properties": {"properties": {
                        "type": "object", "required": ["total"],
                        "properties": {"total": {"type": "number"}}}}}}],
            },
        ],
    }
    section.update(overrides)
    return copy.deepcopy(section)  # callers edit it; MEMBER_V1 stays as it is


def make_config(catalog: dict[str, Any] | None = None, **modes: tuple[str, str]) -> TesseraConfig:
    """The sources ``membership`` (enforce), ``roadservice`` (quarantine), ``crm`` (allow),
    ``web``; ``modes`` overrides (validation, unknown_types) per source."""
    defaults = {"membership": ("enforce", None), "roadservice": ("quarantine", None),
                "crm": ("allow", None), "web": (None, None)}
    defaults.update(modes)
    sources = []
    for name, (validation, unknown) in defaults.items():
        src: dict[str, Any] = {"name": name, "write_key": f"wk_{name}_123"}
        if validation:
            src["validation"] = validation
        if unknown:
            src["unknown_types"] = unknown
        sources.append(src)
    return parse_config({
        "sources": sources,
        "api_keys": [{"key": "rk_read_123", "scopes": ["profiles:read"]},
                     {"key": "ak_admin_123", "scopes": ["admin"]}],
        "identity": {"identifiers": [{"type": "member_number", "limit": 1, "priority": 1}]},
        "catalog": catalog if catalog is not None else catalog_section(),
    })


def key(source: str) -> dict[str, str]:
    return {"Authorization": f"Bearer wk_{source}_123"}


def member_event(event_id: str, **after: Any) -> dict[str, Any]:
    body = {"member_number": "M-1001", "city": "Bergen", **after}
    return {
        "specversion": "1.0", "id": event_id, "source": "membership-service",
        "type": ADDRESS_CHANGED, "time": "2026-03-01T10:00:00Z",
        "data": {"op": "u", "entity": "member", "id": "M-1001", "version": 2,
                 "before": {"member_number": "M-1001", "city": "Oslo"}, "after": body,
                 "changed": ["city"]},
    }


@pytest.fixture(autouse=True)
def _fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SQLITE_SYNCHRONOUS", "OFF")


@pytest.fixture
def app_for(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Api]]:
    """``async with app_for(config) as api``; the same data directory every time."""

    @contextlib.asynccontextmanager
    async def build(config: TesseraConfig) -> AsyncIterator[Api]:
        runtime = Runtime(config, tmp_path / "data")
        app = create_app(runtime)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                              base_url="http://tessera.test") as client,
        ):
            yield Api(client, runtime)

    return build
