"""Error responses: one JSON shape, always naming what was wrong."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from tessera.events.errors import FieldError


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}

    def response(self) -> Response:
        # "code" repeats "error" for the Segment and RudderStack SDKs, which read it
        body: dict[str, Any] = {"error": self.error, "code": self.error, "message": self.message}
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return json_response(body, self.status, self.headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )
