"""Privacy tests reuse the API fixtures: the app in-process on a fresh data directory."""

from __future__ import annotations

from tests.api.conftest import _fast_sqlite, api, api_with  # noqa: F401
