"""Who is calling: a source (write key) or a reader/admin (API key with scopes).

Keys come from the configuration or are managed (``tessera keys``, stored
hashed); :mod:`tessera.privacy.principals` looks both up. An unknown key is
401, a known key outside its scope 403, a key past its rate limit 429 with
``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import math

from starlette.requests import Request

from tessera.api.errors import ApiError
from tessera.privacy.principals import Principal
from tessera.runtime import Runtime


def credentials(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or HTTP Basic with the key as user."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "malformed HTTP Basic credentials") from None
        user, _, _ = decoded.partition(":")
        return user or None
    raise ApiError(401, "unauthorized", f"unsupported authorization scheme {scheme!r}")


def _throttle(runtime: Runtime, principal: Principal) -> None:
    wait = runtime.principals.throttle(principal)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, "rate_limited",
                       f"too many requests with this key; retry in {seconds} s",
                       headers={"Retry-After": str(seconds)})


def source_for(runtime: Runtime, key: str | None) -> str:
    """The source name owning this write key; 401 otherwise, 429 past its rate limit."""
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "a write key is required (Authorization: Bearer "
            "KEY, or HTTP Basic with the key as user)",
        )
    principal = runtime.principals.identify(key)
    if principal is None or principal.kind != "write" or principal.source is None:
        if principal is not None:
            raise ApiError(403, "forbidden", "an API key cannot ingest; use a source's write key")
        raise ApiError(401, "unauthorized", "unknown write key")
    _throttle(runtime, principal)
    return principal.source


def require_scope(runtime: Runtime, request: Request, scope: str) -> Principal:
    """The caller, if their key has ``scope`` (or ``admin``): 401 unknown, 403 outside it."""
    key = credentials(request)
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = runtime.principals.identify(key)
    if principal is None:
        raise ApiError(
            401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    if principal.kind == "write":
        raise ApiError(403, "forbidden", f"a write key cannot read; this needs {scope!r}")
    if not principal.allows(scope):
        raise ApiError(403, "forbidden", f"this key lacks the scope {scope!r}")
    _throttle(runtime, principal)
    request.state.principal = principal  # the audit log names who did an admin action
    return principal
