"""Managed keys: created, rotated and revoked at run time, stored only as digests.

A key is ``<kind prefix>_<43 random URL-safe characters>`` (256 bits from the
OS). The store keeps its SHA-256 digest and its first characters; whoever
reads the records cannot use them to call the API. Because every API process
looks an unknown key up in the shared records (with a short cache), a new key
works, and a revoked one stops working, without restarting anything.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable

from tessera.privacy.records.base import KeyKind, ManagedKey, TrustRecords

SCOPES = frozenset({"profiles:read", "segments:read", "decisions:read", "admin"})
PREFIX_CHARS = 12
TOKEN_PREFIX = {"write": "wk", "api": "ak"}


class KeyError_(ValueError):
    """A key request that cannot be honoured (unknown scope, missing source, unknown key)."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_token(kind: KeyKind) -> str:
    return f"{TOKEN_PREFIX[kind]}_{secrets.token_urlsafe(32)}"


def _check(kind: KeyKind, source: str | None, scopes: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(scopes)
    if kind == "write":
        if not source:
            raise KeyError_("a write key needs the source it ingests for")
        if wanted:
            raise KeyError_("a write key has no scopes: it can only ingest for its source")
        return wanted
    if source:
        raise KeyError_("an API key has scopes, not a source")
    if not wanted:
        raise KeyError_(f"an API key needs at least one scope: {', '.join(sorted(SCOPES))}")
    unknown = wanted - SCOPES
    if unknown:
        raise KeyError_(f"unknown scope(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(SCOPES))}")
    return wanted


def create(
    records: TrustRecords,
    kind: KeyKind,
    *,
    source: str | None = None,
    scopes: Iterable[str] = (),
    name: str = "",
    rate_per_second: float | None = None,
    replaces: str | None = None,
) -> tuple[str, ManagedKey]:
    """A new key: the token (shown once, never stored) and its record."""
    checked = _check(kind, source, scopes)
    if rate_per_second is not None and rate_per_second <= 0:
        raise KeyError_("a rate limit must be positive")
    token = new_token(kind)
    record = ManagedKey(
        id=f"key_{secrets.token_hex(6)}", kind=kind, digest=digest(token),
        prefix=token[:PREFIX_CHARS], source=source, scopes=checked, name=name,
        created_at=time.time(), rate_per_second=rate_per_second, replaces=replaces,
    )
    records.add_key(record)
    return token, record


def rotate(records: TrustRecords, key_id: str) -> tuple[str, ManagedKey]:
    """A new key with the same rights; the old one is revoked at the same moment."""
    old = records.get_key(key_id)
    if old is None or not old.active:
        raise KeyError_(f"no active key {key_id!r}")
    token, new = create(records, old.kind, source=old.source, scopes=old.scopes, name=old.name,
                        rate_per_second=old.rate_per_second, replaces=old.id)
    records.revoke_key(old.id, time.time())
    return token, new


def revoke(records: TrustRecords, key_id: str) -> ManagedKey:
    if not records.revoke_key(key_id, time.time()):
        raise KeyError_(f"no active key {key_id!r}")
    found = records.get_key(key_id)
    assert found is not None
    return found


def describe(key: ManagedKey) -> dict[str, object]:
    """What may be shown about a key: never the digest, only its prefix."""
    out: dict[str, object] = {
        "id": key.id, "kind": key.kind, "prefix": key.prefix, "name": key.name,
        "source": key.source, "scopes": sorted(key.scopes), "created_at": key.created_at,
        "revoked_at": key.revoked_at, "rate_per_second": key.rate_per_second,
        "replaces": key.replaces,
    }
    return out


__all__ = ["SCOPES", "KeyError_", "create", "describe", "digest", "revoke", "rotate"]
