"""Standard Webhooks signatures (https://www.standardwebhooks.com).

Each request carries ``webhook-id`` (stable across retries of one message),
``webhook-timestamp`` (seconds) and ``webhook-signature``: ``v1,`` and the
base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` keyed with the secret. A
secret ``whsec_<base64>`` is used as its decoded bytes (what the Standard
Webhooks libraries do); any other secret as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


@functools.lru_cache(maxsize=256)
def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret (decoded once per secret, not per message)."""
    if secret.startswith(PREFIX):
        try:
            return base64.b64decode(secret[len(PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    secret: str | None, msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    out = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        out["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return out


def verify(
    secret: str, header: Mapping[str, str], body: bytes, tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    msg_id = header.get("webhook-id")
    stamp = header.get("webhook-timestamp")
    given = header.get("webhook-signature")
    if not msg_id or not stamp or not given or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, sig) for sig in given.split(" "))
