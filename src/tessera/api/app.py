"""The ASGI application: ingest, profiles and health, on one FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tessera import __version__
from tessera.activation import api as activation_api
from tessera.api import fastlane, ingest, profiles
from tessera.api.errors import ApiError, json_response
from tessera.catalog import api as catalog_api
from tessera.events.errors import FieldError
from tessera.identity import api as identity_api
from tessera.imports import api as imports_api
from tessera.processing.worker import EVENTS_TOPIC, PROFILES_GROUP
from tessera.runtime import Runtime
from tessera.store.base import StoreUnavailable


def create_app(runtime: Runtime, worker_in_process: bool = False) -> FastAPI:
    """The API for ``runtime``; with ``worker_in_process`` the processor runs in this process."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        task = None
        worker = None
        if worker_in_process:
            worker = runtime.worker()
            task = asyncio.create_task(worker.run())
        app.state.worker = worker
        try:
            yield
        finally:
            if worker is not None and task is not None:
                worker.stop()
                await task
            await runtime.close()

    app = FastAPI(
        title="Tessera",
        version=__version__,
        lifespan=lifespan,
        description="An open-source, event-driven, composable Customer Data Platform.",
    )
    app.state.runtime = runtime
    fastlane.install(app)  # the per-interaction reads, ahead of FastAPI's route matching
    # Routes are matched in order, one by one, so the ones read at hundreds a second
    # (ingest, a profile, its segments and next best action) go first.
    from tessera.personalization import api as personalization_api

    app.include_router(ingest.router)
    app.include_router(profiles.router)
    app.include_router(personalization_api.router)
    app.include_router(imports_api.router)
    app.include_router(identity_api.router)
    app.include_router(activation_api.router)
    app.include_router(catalog_api.router)
    from tessera.privacy import api as privacy_api

    privacy_api.install(app, runtime)  # /v1/privacy/*, /v1/audit; body limit, admin audit
    from tessera import console
    from tessera.observability import routes as observability_routes

    observability_routes.install(app)  # /metrics, request ids, tracing
    console.install(app)  # /console

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        return ApiError(503, "unavailable", f"the profile store cannot be reached: {exc}",
                        headers={"Retry-After": "5"}).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [FieldError(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        return ApiError(400, "invalid_request", "the request is invalid", errors).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "not_found", 405: "method_not_allowed"}
        name = names.get(exc.status_code, "http_error")
        return json_response(
            {"error": name, "code": name, "message": str(exc.detail)},
            exc.status_code,
            dict(exc.headers or {}),
        )

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="The bus and the store answer")
    async def readyz() -> Response:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(runtime.bus.lag(EVENTS_TOPIC, PROFILES_GROUP), 2.0)
            checks["bus"] = "ok"
        except Exception as exc:
            checks["bus"] = f"unavailable: {exc}"
        try:
            await asyncio.wait_for(asyncio.to_thread(runtime.store.resolve, "user_id:-"), 2.0)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return json_response(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            200 if ready else 503,
            None if ready else {"Retry-After": "5"},
        )

    @app.get("/v1/stats", tags=["health"], summary="Counts and consumer lag")
    async def stats(request: Request) -> Response:
        from tessera.api.auth import require_scope

        require_scope(runtime, request, "profiles:read")
        counts = await asyncio.to_thread(runtime.store.counts)
        lag = await runtime.bus.lag(EVENTS_TOPIC, PROFILES_GROUP)
        return json_response({"store": counts, "lag": {PROFILES_GROUP: lag}})

    @app.get("/v1/consumers", tags=["health"], summary="Consumer lag per group")
    async def consumers(request: Request) -> Response:
        from tessera.api.auth import require_scope
        from tessera.bus.base import BusUnavailable
        from tessera.observability.metrics import watched_groups

        require_scope(runtime, request, "profiles:read")
        watched = watched_groups(runtime.config)
        try:
            lags = await asyncio.wait_for(
                asyncio.gather(*(runtime.bus.lag(t, g) for t, g in watched)), 5.0)
        except (BusUnavailable, TimeoutError) as exc:
            raise ApiError(503, "unavailable", f"the bus does not answer: {exc}",
                           headers={"Retry-After": "5"}) from None
        return json_response([{"group": g, "topic": t, "lag": lag}
                              for (t, g), lag in zip(watched, lags, strict=True)])

    return app
