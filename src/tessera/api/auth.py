"""Who is calling: a source (write key) or a reader/admin (API key with scopes)."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from tessera.api.errors import ApiError
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


def _lookup(table: dict[str, str] | dict[str, frozenset[str]], key: str) -> object | None:
    for known, value in table.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            return value
    return None


def source_for(runtime: Runtime, key: str | None) -> str:
    """The source name owning this write key; 401 otherwise."""
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "a write key is required (Authorization: Bearer "
            "KEY, or HTTP Basic with the key as user)",
        )
    name = runtime.write_keys.get(key)
    if name is None:
        raise ApiError(401, "unauthorized", "unknown write key")
    return name


def require_scope(runtime: Runtime, request: Request, scope: str) -> None:
    key = credentials(request)
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scopes = runtime.api_keys.get(key)
    if scopes is None:
        if key in runtime.write_keys:
            raise ApiError(403, "forbidden", f"a write key cannot read; this needs {scope!r}")
        raise ApiError(
            401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    if scope not in scopes and "admin" not in scopes:
        raise ApiError(403, "forbidden", f"this key lacks the scope {scope!r}")
