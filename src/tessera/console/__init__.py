"""The web console: overview, customers, subscriptions, journeys, catalog, identity review,
dead letters.

Server-rendered (Jinja2 templates, htmx for the live parts, a few lines of
plain JavaScript for the server-sent-event tail), so there is no front-end
build step; htmx is vendored in ``static/``. Each page reads the same domain
functions as the API and the command line, so all three agree.
"""

from __future__ import annotations

from fastapi import FastAPI

from tessera.console import catalog, journeys, review, subscriptions
from tessera.console.tail import TAIL
from tessera.console.views import router
from tessera.observability.metrics import on_ingest


def install(app: FastAPI) -> None:
    """Serve the console at ``/console`` and feed its live tail from ingest."""
    on_ingest(TAIL.offer)
    app.include_router(router)
    for section in (subscriptions, journeys, catalog, review):
        app.include_router(section.router)


__all__ = ["install", "router"]
