"""Plain Starlette routes, ahead of FastAPI's, for the reads made on every interaction.

A contact-center screen asks for a profile, its segments and its next best
action on every refresh, hundreds of times a second. FastAPI (0.16x) finds a
request's route by trying every included router's routes in turn, twice (to
choose, then to handle), and resolves even ``identifier: str, request: Request``
through its dependency machinery: profiled in-process, that was about 40 % of
the API's CPU for a decision, more than the decision itself.

These endpoints only take the request and one path parameter, so they are
also registered here as Starlette routes, first in the route list: one regular
expression tried, then the same endpoint function. Errors still go through the
app's exception handlers (they wrap the router), the auth checks are the
endpoints' own, and the FastAPI registrations stay for the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

Endpoint = Callable[[str, Request], Awaitable[Response]]


def _adapt(endpoint: Endpoint, route: list[BaseRoute]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        request.scope["route"] = route[0]  # the route label of the request metrics
        return await endpoint(request.path_params["identifier"], request)

    return handle


def install(app: FastAPI) -> None:
    """Call before the routers are included, so these routes are tried first."""
    from tessera.api import profiles
    from tessera.personalization import api as personalization_api

    hot: list[tuple[str, Endpoint]] = [
        ("/v1/profiles/{identifier}", profiles.get_profile),
        ("/v1/profiles/{identifier}/segments", personalization_api.profile_segments),
        ("/v1/profiles/{identifier}/next-best-action", personalization_api.next_best_action),
    ]
    for path, endpoint in hot:
        holder: list[BaseRoute] = []
        app.router.add_route(path, _adapt(endpoint, holder), methods=["GET"],
                             include_in_schema=False)
        holder.append(app.router.routes[-1])
