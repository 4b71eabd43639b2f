"""Access to real services (PostgreSQL, NATS) for the tests that need them.

A test that needs a service skips when the service is absent, unless
``TESSERA_REQUIRE_SERVICES`` is set (CI sets it): then it fails instead.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get(
    "TESSERA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
NATS_URL = os.environ.get("TESSERA_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("TESSERA_REQUIRE_SERVICES"):
        pytest.fail(message + " and TESSERA_REQUIRE_SERVICES is set")
    pytest.skip(message)


def require_postgres() -> str:
    require("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


def require_nats() -> str:
    require("NATS", "127.0.0.1", 4222)
    return NATS_URL
