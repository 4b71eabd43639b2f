"""The console's login: an admin API key, then a signed session cookie.

The cookie holds no key, only a digest of it and the time of login, signed
with the console secret (``TESSERA_CONSOLE_SECRET``, else a random secret kept
in ``<data dir>/console-secret``; set the variable when several API processes
serve one console). Each request checks that an API key with the ``admin``
scope still has that digest, so removing the key from the configuration ends
its sessions. Forms and htmx requests that change something carry a CSRF token
derived from the session; the cookie is also ``SameSite=Strict`` and
``HttpOnly``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from tessera.runtime import Runtime

COOKIE = "tessera_console"
MAX_AGE_SECONDS = 12 * 3600
SECRET_ENV = "TESSERA_CONSOLE_SECRET"
SECRET_FILE = "console-secret"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _secret(data_dir: Path) -> str:
    configured = os.environ.get(SECRET_ENV)
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    return secret


class Sessions:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.secret = _secret(runtime.data_dir)
        self.serializer = URLSafeTimedSerializer(self.secret, salt="tessera-console")

    def admin_digests(self) -> set[str]:
        # configured and managed (``tessera keys``) admin keys: revoking one ends its sessions
        return self.runtime.principals.admin_digests()

    def is_admin_key(self, key: str) -> bool:
        principal = self.runtime.principals.identify(key)
        return principal is not None and principal.allows("admin")

    def issue(self, key: str) -> str:
        return self.serializer.dumps({"k": key_digest(key)})

    def current(self, request: Request) -> str | None:
        """The session's token if the request carries a valid one."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            body = self.serializer.loads(token, max_age=MAX_AGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(body, dict) or body.get("k") not in self.admin_digests():
            return None
        return token

    def csrf_token(self, session_token: str) -> str:
        return hmac.new(self.secret.encode(), b"csrf:" + session_token.encode(),
                        hashlib.sha256).hexdigest()

    def check_csrf(self, session_token: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            self.csrf_token(session_token), presented or ""
        )
