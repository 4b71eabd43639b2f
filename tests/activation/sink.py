"""Python destinations for the tests (referenced as ``tests.activation.sink:...``)."""

from __future__ import annotations

from typing import Any

from tessera.activation.destinations import PermanentError

RECEIVED: list[tuple[dict[str, Any], dict[str, Any]]] = []
FAILURES = {"left": 0}


def collect(event: dict[str, Any], options: dict[str, Any]) -> None:
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise ConnectionError("the CRM is down")
    RECEIVED.append((event, options))


async def collect_async(event: dict[str, Any], options: dict[str, Any]) -> None:
    if event["data"].get("reject"):
        raise PermanentError("the CRM refuses this record")
    RECEIVED.append((event, options))
