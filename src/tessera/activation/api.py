"""Admin API of subscriptions and journeys (``admin`` scope).

``POST /v1/subscriptions``, ``GET /v1/subscriptions``, ``GET|DELETE
/v1/subscriptions/{name}``, ``POST /v1/subscriptions/{name}/pause|resume``,
``GET /v1/journeys``. Subscriptions created here are kept in the activation state
beside the store (``activation.db``, or the store's PostgreSQL, so every host's
workers see them) and picked up by the running workers within a second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from tessera.activation.delivery import group_name
from tessera.activation.destinations import load_callable
from tessera.activation.model import PythonDestination, SubscriptionConfig
from tessera.activation.service import (
    UnknownDestination,
    configured_subscriptions,
    overview,
    resolve_destination,
)
from tessera.activation.state import ActivationState, SubscriptionExists, open_activation_state
from tessera.api.auth import require_scope
from tessera.api.body import parse_json, read_body
from tessera.api.errors import ApiError, json_response
from tessera.api.models import SubscriptionList, SubscriptionOut
from tessera.events.errors import FieldError
from tessera.runtime import Runtime

router = APIRouter(tags=["activation"])
MAX_SUBSCRIPTION_BYTES = 256 * 1024


def activation_state(runtime: Runtime) -> ActivationState:
    """One per process, beside the runtime's store (opened on first use)."""
    state: ActivationState | None = getattr(runtime, "_activation_state", None)
    if state is None:
        state = open_activation_state(runtime.store_url, runtime.data_dir)
        runtime._activation_state = state  # type: ignore[attr-defined]
    return state


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    require_scope(runtime, request, "admin")
    return runtime


def _invalid(exc: ValidationError) -> ApiError:
    errors = [FieldError(".".join(str(p) for p in e["loc"]) or "(body)",
                         "unknown field" if e["type"] == "extra_forbidden" else e["msg"])
              for e in exc.errors()]
    return ApiError(400, "invalid_subscription", "the subscription is invalid", errors)


@router.post("/v1/subscriptions", status_code=201, summary="Create a subscription",
             response_model=SubscriptionOut)
async def create_subscription(request: Request) -> Response:
    runtime = _runtime(request)
    # strict JSON (duplicate keys, depth, huge numbers) and a size limit, as every body
    body: Any = parse_json(await read_body(request, MAX_SUBSCRIPTION_BYTES))
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_subscription", "the body must be a JSON object")
    try:
        sub = SubscriptionConfig.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if sub.name in configured_subscriptions(runtime.config):
        raise ApiError(409, "conflict", f"subscription {sub.name!r} is defined in the "
                                        "configuration file")
    try:
        destination = resolve_destination(runtime.config, sub)
        if isinstance(destination, PythonDestination):
            load_callable(destination)
    except (UnknownDestination, LookupError, ImportError, AttributeError) as exc:
        raise ApiError(400, "invalid_subscription", str(exc)) from None
    state = activation_state(runtime)
    if await asyncio.to_thread(state.get, sub.name) is not None:
        raise ApiError(409, "conflict", f"subscription {sub.name!r} already exists")
    created_at = time.time()
    since = 0.0 if sub.start == "beginning" else created_at
    for topic in sub.topics:
        await runtime.bus.reset(topic, group_name(sub.name), since)
    try:
        await asyncio.to_thread(state.create, sub, "api", True, created_at)
    except SubscriptionExists:
        raise ApiError(409, "conflict", f"subscription {sub.name!r} already exists") from None
    found = await overview(runtime.config, runtime.bus, state, sub.name)
    return json_response(found[0], 201)


@router.get("/v1/subscriptions", summary="Subscriptions with their delivery figures",
            response_model=SubscriptionList)
async def list_subscriptions(request: Request) -> Response:
    runtime = _runtime(request)
    subs = await overview(runtime.config, runtime.bus, activation_state(runtime))
    return json_response({"subscriptions": subs})


async def _one(runtime: Runtime, name: str) -> dict[str, Any]:
    found = await overview(runtime.config, runtime.bus, activation_state(runtime), name)
    if not found:
        raise ApiError(404, "not_found", f"no subscription {name!r}")
    return found[0]


@router.get("/v1/subscriptions/{name}", summary="One subscription",
            response_model=SubscriptionOut)
async def get_subscription(name: str, request: Request) -> Response:
    return json_response(await _one(_runtime(request), name))


@router.delete("/v1/subscriptions/{name}", status_code=204, summary="Delete a subscription")
async def delete_subscription(name: str, request: Request) -> Response:
    runtime = _runtime(request)
    found = await _one(runtime, name)
    if found["origin"] != "api":
        raise ApiError(409, "conflict", f"subscription {name!r} is defined in the "
                                        f"{found['origin']} configuration; remove it there")
    await asyncio.to_thread(activation_state(runtime).delete, name)
    return Response(status_code=204)


async def _set_paused(request: Request, name: str, paused: bool) -> Response:
    runtime = _runtime(request)
    await _one(runtime, name)
    state = activation_state(runtime)
    if not await asyncio.to_thread(state.set_paused, name, paused):
        raise ApiError(409, "conflict", f"subscription {name!r} has not started yet; "
                                        "start the worker first")
    return json_response(await _one(runtime, name))


@router.post("/v1/subscriptions/{name}/pause", summary="Stop delivering (events wait)",
             response_model=SubscriptionOut)
async def pause_subscription(name: str, request: Request) -> Response:
    return await _set_paused(request, name, True)


@router.post("/v1/subscriptions/{name}/resume", summary="Deliver again",
             response_model=SubscriptionOut)
async def resume_subscription(name: str, request: Request) -> Response:
    return await _set_paused(request, name, False)


@router.get("/v1/journeys", summary="Journeys with their counts per step")
async def list_journeys(request: Request) -> Response:
    runtime = _runtime(request)
    from tessera.journeys.report import counts_in

    journeys = await asyncio.to_thread(counts_in, runtime.config.journeys, runtime.data_dir,
                                       runtime.store_url)
    return json_response({"journeys": journeys})
