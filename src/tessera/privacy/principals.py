"""Who is calling, and how fast they may: key lookup with a short cache, and rate limits.

Configured keys (``sources[].write_key``, ``api_keys``) are compared in
constant time in memory. Any other key is hashed and looked up in the trust
records; the answer, found or not, is cached for ``privacy.key_cache_seconds``
(2 s by default), so a key created or revoked by ``tessera keys`` takes effect
in every API process within that time without a restart, and a flood of bad
keys costs one read per key per period, not per request.

Rate limits are token buckets per key, in each API process: a key gets
``requests_per_second`` with bursts up to ``burst``. Several API processes
each enforce the limit, so the installation-wide limit is that many times
higher; a shared counter would put a store round trip on every request.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass

from tessera.config import PrivacyConfig
from tessera.privacy.keys import digest
from tessera.privacy.records.base import TrustRecords

CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str
    """``write`` (a source's key) or ``api`` (scoped read or admin key)."""
    id: str
    """A managed key's id, or ``config:<first characters>`` for a configured key."""
    source: str | None = None
    scopes: frozenset[str] = frozenset()
    rate_per_second: float | None = None

    def allows(self, scope: str) -> bool:
        return self.kind == "api" and (scope in self.scopes or "admin" in self.scopes)


def _config_id(key: str) -> str:
    return f"config:{key[:6]}"


class Principals:
    """Looks keys up; ``write_keys`` / ``api_keys`` are the configured keys (key to source,
    key to scopes), read live so that what a process changes in them takes effect at once."""

    def __init__(
        self,
        settings: PrivacyConfig,
        write_keys: dict[str, str],
        api_keys: dict[str, frozenset[str]],
        records: TrustRecords,
    ) -> None:
        self.records = records
        self.cache_seconds = settings.key_cache_seconds
        self.limit = settings.rate_limit
        self.write_keys = write_keys
        self.api_keys = api_keys
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _configured(self, key: str) -> Principal | None:
        raw = key.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        for known, source in self.write_keys.items():
            if hmac.compare_digest(known.encode(), raw):
                found = Principal("write", _config_id(known), source=source)
        for known, scopes in self.api_keys.items():
            if hmac.compare_digest(known.encode(), raw):
                found = Principal("api", _config_id(known), scopes=scopes)
        return found

    def identify(self, key: str) -> Principal | None:
        """The principal holding ``key``; None for an unknown or revoked key."""
        found = self._configured(key)
        if found is not None:
            return found
        hashed = digest(key)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = self.records.key_by_digest(hashed)
        principal: Principal | None = None
        if record is not None and record.active:
            principal = Principal(record.kind, record.id, record.source, record.scopes,
                                  record.rate_per_second)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[hashed] = (now + self.cache_seconds, principal)
        return principal

    def admin_digests(self) -> set[str]:
        """Digests of every active key with the admin scope (configured or managed)."""
        out = {digest(k) for k, scopes in self.api_keys.items() if "admin" in scopes}
        out |= {k.digest for k in self.records.list_keys()
                if k.kind == "api" and "admin" in k.scopes}
        return out

    def throttle(self, principal: Principal) -> float | None:
        """None if the request may go ahead, else the seconds until it may."""
        rate = principal.rate_per_second
        burst: float
        if rate is None:
            if self.limit is None:
                return None
            rate = self.limit.requests_per_second
            burst = float(self.limit.burst or max(1, math.ceil(rate)))
        else:
            burst = float(max(1, math.ceil(rate)))
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(principal.id, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[principal.id] = (tokens - 1.0, now)
                return None
            self._buckets[principal.id] = (tokens, now)
            return (1.0 - tokens) / rate
