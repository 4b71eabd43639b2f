"""Encryption at rest of personal data in the store: AES-GCM with keys from the environment.

The store's files (or PostgreSQL's tables, and their backups) are copied far
more widely than the processes that read them. With ``privacy.encryption``
on, what the store keeps of a person is ciphertext:

* the values of traits declared personal (``privacy.encryption.traits`` and
  every catalog trait copied from a path the catalog lists under ``pii``),
* the events of the timeline, whole: a payload can carry personal data that
  no catalog declared (Segment traits, free text), and nothing queries inside
  stored events, so encrypting the document costs no feature,
* the outbox messages waiting for the bus (``profile.updated`` carries the
  changed trait values).

Identifier values stay in the clear: they are the index every event is
resolved by (see docs/privacy.md).

Keys come from ``TESSERA_PII_KEYS`` (the variable is configurable) as
``id:base64,id:base64``: the first key encrypts, all of them decrypt, so a new
key is put first and ``tessera privacy rotate-key`` re-encrypts what the older
ones wrote. Every ciphertext names its key id, and the trust records keep, per
key id, a check value (an encryption of a constant) so that a process started
with a missing or wrong key stops at once with a message naming the key,
rather than failing in the middle of processing.

This module knows no database: :class:`FieldCipher` is the codec that the
store wrapper (:mod:`tessera.store.encrypted`) calls at the store boundary.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.config import ConfigError, TesseraConfig

if TYPE_CHECKING:
    from tessera.privacy.records.base import TrustRecords

TEXT_PREFIX = "$tsenc1:"
"""Marks an encrypted trait value (a JSON string, so it fits a jsonb column)."""
BYTES_PREFIX = b"$tsenc1:"
"""Marks an encrypted outbox payload (plain payloads are JSON and start with ``{``)."""
EVENT_KEY = "$tsenc1"
"""The one key of an encrypted timeline document (a real event has ``specversion``...)."""
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_CHECK_PLAINTEXT = b"tessera key check"


class EncryptionError(ConfigError):
    """Keys missing, malformed or not the ones the stored data was encrypted with."""


class DecryptionError(Exception):
    """A stored ciphertext could not be opened (unknown key id, or tampered with)."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Key ids and AES keys, the encrypting one first."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def current(self) -> str | None:
        return self.keys[0][0] if self.keys else None

    def get(self, key_id: str) -> bytes | None:
        for kid, key in self.keys:
            if kid == key_id:
                return key
        return None

    def ids(self) -> list[str]:
        return [kid for kid, _ in self.keys]

    @classmethod
    def parse(cls, text: str, variable: str = "TESSERA_PII_KEYS") -> Keyring:
        """``id:base64[,id:base64...]``; errors name the entry, never the key material."""
        keys: list[tuple[str, bytes]] = []
        for n, part in enumerate((p.strip() for p in text.split(",")), start=1):
            if not part:
                continue
            kid, sep, encoded = part.partition(":")
            if not sep or not _KEY_ID.match(kid):
                raise EncryptionError(
                    f"{variable}: entry {n} must be KEY_ID:BASE64 with a key id of letters, "
                    f"digits, '_' or '-' (at most 32)")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise EncryptionError(f"{variable}: key {kid!r} is not valid base64") from None
            if len(key) not in (16, 24, 32):
                raise EncryptionError(
                    f"{variable}: key {kid!r} is {len(key)} bytes; AES-GCM needs 16, 24 or 32 "
                    f"(32 recommended: `openssl rand -base64 32`)")
            if any(kid == k for k, _ in keys):
                raise EncryptionError(f"{variable}: key id {kid!r} appears twice")
            keys.append((kid, key))
        if not keys:
            raise EncryptionError(f"{variable} is set but holds no key")
        return cls(tuple(keys))


def new_key() -> str:
    """A fresh 256-bit key, base64 (for ``tessera privacy new-key``)."""
    return base64.b64encode(os.urandom(32)).decode()


class FieldCipher:
    """Seals and opens traits, timeline events and outbox payloads (the store wrapper's codec).

    ``encrypting`` is False when encryption is switched off but keys are still
    given: existing ciphertext is read, nothing new is encrypted (and
    ``rotate-key`` then writes everything back in the clear).
    """

    def __init__(self, keyring: Keyring, pii_traits: PiiTraits, *, encrypting: bool = True,
                 timeline: bool = True) -> None:
        self.keyring = keyring
        self.pii = pii_traits
        self.encrypting = encrypting and keyring.current is not None
        self.encrypt_events = self.encrypting and timeline
        self._aead = {kid: AESGCM(key) for kid, key in keyring.keys}
        self.current = keyring.current if self.encrypting else None
        self._pool = b""
        self._pool_at = 0
        self._pool_lock = threading.Lock()

    # -- the primitive

    def _nonce(self) -> bytes:
        """12 random bytes: drawn from the OS 4 KB at a time (one system call per 341 seals)."""
        with self._pool_lock:  # two threads must never take the same nonce
            if self._pool_at >= len(self._pool):
                self._pool = os.urandom(NONCE_BYTES * 341)
                self._pool_at = 0
            at = self._pool_at
            self._pool_at = at + NONCE_BYTES
            return self._pool[at:at + NONCE_BYTES]

    def _seal(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        assert self.current is not None
        nonce = self._nonce()
        return self.current, nonce + self._aead[self.current].encrypt(nonce, plaintext, aad)

    def _open(self, kid: str, blob: bytes, aad: bytes) -> bytes:
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionError(f"encrypted with key {kid!r}, which the keyring does not hold")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(f"ciphertext under key {kid!r} does not authenticate") from None

    # -- traits: a JSON string "$tsenc1:<kid>:<base64>" in place of the value

    def wants_trait(self, name: str, value: Any) -> bool:
        """Encrypt this trait? Personal ones, and any value that looks like ciphertext.

        The second rule keeps a sender from planting a string that a later
        read would mistake for ciphertext.
        """
        if not self.encrypting:
            return False
        return self.pii.is_pii(name) or (isinstance(value, str) and value.startswith(TEXT_PREFIX))

    def seal_trait(self, name: str, value: Any) -> str:
        kid, blob = self._seal(orjson.dumps(value), b"trait\x00" + name.encode())
        return f"{TEXT_PREFIX}{kid}:{base64.b64encode(blob).decode()}"

    def open_trait(self, name: str, stored: Any) -> Any:
        """The clear value; a value that is not (valid) ciphertext is returned as stored.

        The startup check guarantees every key that wrote ciphertext is in the
        keyring, so what fails here is a string that only looks like ciphertext
        (written while nothing was being encrypted), not a lost value.
        """
        if not (isinstance(stored, str) and stored.startswith(TEXT_PREFIX)):
            return stored
        kid, _, encoded = stored[len(TEXT_PREFIX):].partition(":")
        try:
            blob = base64.b64decode(encoded, validate=True)
            return orjson.loads(self._open(kid, blob, b"trait\x00" + name.encode()))
        except (DecryptionError, binascii.Error, ValueError):
            return stored

    # -- timeline events: {"$tsenc1": "<kid>:<base64>"} in place of the document

    def seal_event(self, event_uid: str, event: dict[str, Any]) -> dict[str, Any]:
        if not self.encrypt_events or not event:
            return event
        kid, blob = self._seal(orjson.dumps(event), b"event\x00" + event_uid.encode())
        return {EVENT_KEY: f"{kid}:{base64.b64encode(blob).decode()}"}

    def open_event(self, event_uid: str, stored: dict[str, Any]) -> dict[str, Any]:
        sealed = stored.get(EVENT_KEY) if len(stored) == 1 else None
        if not isinstance(sealed, str):
            return stored
        kid, _, encoded = sealed.partition(":")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError(f"timeline event {event_uid}: malformed ciphertext") from None
        out: dict[str, Any] = orjson.loads(self._open(kid, blob, b"event\x00" + event_uid.encode()))
        return out

    # -- outbox payloads: b"$tsenc1:<kid>:" + nonce + ciphertext

    def seal_payload(self, message_id: str, payload: bytes) -> bytes:
        if not self.encrypting:
            return payload
        kid, blob = self._seal(payload, b"outbox\x00" + message_id.encode())
        return BYTES_PREFIX + kid.encode() + b":" + blob

    def open_payload(self, message_id: str, stored: bytes) -> bytes:
        if not stored.startswith(BYTES_PREFIX):
            return stored
        kid, _, blob = stored[len(BYTES_PREFIX):].partition(b":")
        return self._open(kid.decode(errors="replace"), blob, b"outbox\x00" + message_id.encode())

    # -- which key wrote a stored value (rotation skips what is already current)

    @staticmethod
    def trait_key_id(stored: Any) -> str | None:
        if isinstance(stored, str) and stored.startswith(TEXT_PREFIX):
            return stored[len(TEXT_PREFIX):].partition(":")[0]
        return None

    @staticmethod
    def event_key_id(stored: Mapping[str, Any]) -> str | None:
        sealed = stored.get(EVENT_KEY) if len(stored) == 1 else None
        return sealed.partition(":")[0] if isinstance(sealed, str) else None

    @staticmethod
    def payload_key_id(stored: bytes) -> str | None:
        if stored.startswith(BYTES_PREFIX):
            return stored[len(BYTES_PREFIX):].partition(b":")[0].decode(errors="replace")
        return None

    # -- check values: does this key id hold the key that wrote the data?

    def check_value(self, kid: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._aead[kid].encrypt(nonce, _CHECK_PLAINTEXT, b"check\x00" + kid.encode())
        return base64.b64encode(blob).decode()

    def verify_check(self, kid: str, check: str) -> bool:
        try:
            blob = base64.b64decode(check, validate=True)
            return self._open(kid, blob, b"check\x00" + kid.encode()) == _CHECK_PLAINTEXT
        except (DecryptionError, binascii.Error, ValueError):
            return False


class PiiTraits:
    """Which trait names are personal: configured names or patterns, and the catalog's.

    A catalog event type that copies a path it declares ``pii`` into a trait
    (``traits: {first_name: data.after.first_name}``, ``pii: [data.after.first_name]``)
    makes that trait personal, so the catalog stays the one place to declare it.
    """

    def __init__(self, config: TesseraConfig) -> None:
        names = set(config.privacy.encryption.traits)
        if config.catalog is not None:
            for event in config.catalog.events:
                pii = set(event.pii)
                names.update(trait for trait, path in event.traits.items() if path in pii)
        self.patterns = sorted(n for n in names if any(c in n for c in "*?["))
        self.names = frozenset(names) - set(self.patterns)
        self._cache: dict[str, bool] = {}

    def is_pii(self, name: str) -> bool:
        if name in self.names:
            return True
        if not self.patterns:
            return False
        known = self._cache.get(name)
        if known is None:
            known = any(fnmatchcase(name, p) for p in self.patterns)
            if len(self._cache) < 10_000:
                self._cache[name] = known
        return known


def cipher_from_environment(config: TesseraConfig,
                            environ: Mapping[str, str] | None = None) -> FieldCipher | None:
    """The cipher this process uses, or None when there is nothing to encrypt or decrypt.

    Enabled without a key is an error here, at start, naming the variable.
    """
    settings = config.privacy.encryption
    env = os.environ if environ is None else environ
    text = env.get(settings.keys_env, "").strip()
    if not text:
        if settings.enabled:
            raise EncryptionError(
                f"privacy.encryption.enabled is true but {settings.keys_env} is not set: give "
                f"it KEY_ID:BASE64 (a 32-byte key: `openssl rand -base64 32`)")
        return None
    keyring = Keyring.parse(text, settings.keys_env)
    return FieldCipher(keyring, PiiTraits(config), encrypting=settings.enabled,
                       timeline=settings.timeline)


def check_keys(records: TrustRecords, cipher: FieldCipher | None, variable: str) -> None:
    """Stop at start if the stored data needs a key this process lacks or holds wrongly.

    Every key id that encrypted data (and was not retired by a finished
    rotation) must be in the keyring, with the key whose check value the
    records hold. The encrypting key is registered here, before anything is
    written with it.
    """
    registered = {k.id: k for k in records.data_keys()}
    live = sorted(kid for kid, k in registered.items() if k.retired_at is None)
    if cipher is None:
        if live:
            raise EncryptionError(
                f"the store holds values encrypted with key(s) {', '.join(live)}, but "
                f"{variable} is not set: set it (the keys are needed to read them)")
        return
    missing = [kid for kid in live if cipher.keyring.get(kid) is None]
    if missing:
        raise EncryptionError(
            f"the store holds values encrypted with key(s) {', '.join(missing)}, which "
            f"{variable} does not hold: add them after the current key (or finish "
            f"`tessera privacy rotate-key` while they are still given)")
    for kid in cipher.keyring.ids():
        known = registered.get(kid)
        if known is not None and not cipher.verify_check(kid, known.check):
            raise EncryptionError(
                f"{variable}: key {kid!r} is not the key that id was first used with; stored "
                f"values could not be read with it")
    if cipher.current is not None:
        known = registered.get(cipher.current)
        if known is None:
            records.add_data_key(cipher.current, cipher.check_value(cipher.current), time.time())
        elif known.retired_at is not None:
            records.unretire_data_key(cipher.current)
