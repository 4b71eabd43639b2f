"""Configuration as code: one ``tessera.yaml``, validated at start.

Every model forbids unknown fields so that a typo stops the process with the
file, the path and the reason instead of being silently ignored. With no file
at all, :func:`default_config` gives the demo's settings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tessera.activation.model import Destination, SubscriptionConfig
from tessera.catalog.model import CatalogConfig, UnknownTypes, ValidationMode
from tessera.journeys.model import JourneyConfig
from tessera.personalization.model import PersonalizationConfig

SCOPES = {"profiles:read", "segments:read", "decisions:read", "admin"}


class Strict(BaseModel):
    # strict: a YAML value of the wrong type ("5", true for a number) is an error, not coerced
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SourceConfig(Strict):
    """A system that sends events, identified by its write key."""

    name: str = Field(min_length=1)
    write_key: str = Field(min_length=8)
    priority: int = 0
    """Trait survivorship priority of this source; higher wins over event time."""
    validation: ValidationMode | None = None
    """How events of catalog types that break their schema are handled (default: the catalog's)."""
    unknown_types: UnknownTypes | None = None
    """How events of types missing from the catalog are handled (default: the catalog's)."""


class ApiKeyConfig(Strict):
    key: str = Field(min_length=8)
    scopes: list[str] = Field(min_length=1)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope!r}; known: {', '.join(sorted(SCOPES))}")
        return scopes


class IdentifierConfig(Strict):
    """An identifier type, how to find it in events, and its merge limit.

    ``limit`` is how many values of this type one profile may hold: a
    ``member_number`` with limit 1 means two profiles with different member
    numbers never merge. ``priority`` orders identifiers when a limit would
    break (1 is highest); the lower-priority identifier is left out of the match.
    """

    type: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    limit: int = Field(default=0, ge=0)
    """0 means unlimited."""
    priority: int = Field(default=100, ge=1)
    paths: list[str] = Field(default_factory=list)
    normalize: Literal["none", "lower", "email", "phone"] = "none"


class IdentityConfig(Strict):
    identifiers: list[IdentifierConfig] = Field(default_factory=list)
    blocked_values: list[str] = Field(
        default_factory=lambda: [
            "null",
            "none",
            "nil",
            "undefined",
            "anonymous",
            "unknown",
            "n/a",
            "na",
            "-",
            "test",
            "test@test.com",
            "noemail@example.com",
            "[object object]",
        ]
    )
    """Values (compared trimmed and case-insensitively) that are never identifiers."""
    blocked_patterns: list[str] = Field(default_factory=lambda: [r"^0+$", r"^\+?0+$"])
    """Regular expressions; a value matching any is dropped (all-zero and similar)."""
    default_phone_region: str = "US"

    @field_validator("blocked_patterns")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _unique_types(self) -> IdentityConfig:
        seen: set[str] = set()
        for ident in self.identifiers:
            if ident.type in seen:
                raise ValueError(f"identifier type {ident.type!r} is declared twice")
            seen.add(ident.type)
        return self


class TraitRule(Strict):
    """Survivorship for one trait: which sources win, in order (first is highest)."""

    trait: str
    sources: list[str] = Field(min_length=1)


class TraitMapping(Strict):
    """Copy a payload value into a profile trait for matching event types."""

    event: str = Field(min_length=1)
    """Event type, ``*`` wildcards allowed (``com.example.membership.*``)."""
    path: str = Field(min_length=1)
    trait: str = Field(min_length=1)


class TraitsConfig(Strict):
    rules: list[TraitRule] = Field(default_factory=list)
    mappings: list[TraitMapping] = Field(default_factory=list)
    source_priority: list[str] = Field(default_factory=list)
    """Source names, highest first, applied to every trait without its own rule."""


class ProcessorConfig(Strict):
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_seconds: float = Field(default=0.2, ge=0)


class RateLimitConfig(Strict):
    """A token bucket per key: ``requests_per_second`` sustained, bursts up to ``burst``."""

    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)
    """Default: one second's worth of requests."""


class EncryptionConfig(Strict):
    """Encryption at rest of personal data in the store (see :mod:`tessera.privacy.encryption`)."""

    enabled: bool = False
    """Encrypt personal traits, timeline events and outbox messages with the first key of
    ``keys_env``; off, existing ciphertext is still read if the keys are given."""
    traits: list[str] = Field(default_factory=list)
    """Personal trait names (``*`` patterns allowed), besides catalog traits copied from a
    path the catalog declares ``pii``."""
    timeline: bool = True
    """Encrypt each timeline event whole (its payload may hold undeclared personal data)."""
    keys_env: str = Field(default="TESSERA_PII_KEYS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding ``KEY_ID:BASE64`` keys, comma-separated, newest first."""


class PrivacyConfig(Strict):
    """Trust and privacy: data subject requests, suppression, key lookups, rate limits."""

    erasure: Literal["delete", "anonymize"] = "delete"
    """``delete`` removes the person; ``anonymize`` keeps a profile with no identifiers, no
    traits and timeline entries without their data (counts stay right)."""
    suppression: Literal["drop", "anonymize"] = "drop"
    """A late event carrying an erased identifier: ``drop`` it, or keep it with the erased
    identifiers (and catalog-declared personal fields) removed."""
    key_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long an API process trusts what it read about a managed key (revocation delay)."""
    rate_limit: RateLimitConfig | None = None
    """Per-key request rate limit for keys without their own; none: unlimited."""
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)


class TesseraConfig(Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    traits: TraitsConfig = Field(default_factory=TraitsConfig)
    processor: ProcessorConfig = Field(default_factory=ProcessorConfig)
    bus_url: str | None = None
    store_url: str | None = None
    destinations: dict[str, Destination] = Field(default_factory=dict)
    """Named destinations that subscriptions and journey actions refer to."""
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    journeys: list[JourneyConfig] = Field(default_factory=list)
    catalog: CatalogConfig | None = None
    """The event catalog (also read from ``catalog/*.yaml`` beside the file); none: no checks."""
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig)
    """Computed traits, audiences and the next-best-action catalog."""
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _unique_keys(self) -> TesseraConfig:
        names: set[str] = set()
        keys: set[str] = set()
        for src in self.sources:
            if src.name in names:
                raise ValueError(f"source name {src.name!r} is declared twice")
            if src.write_key in keys:
                raise ValueError(f"write key of source {src.name!r} is used twice")
            names.add(src.name)
            keys.add(src.write_key)
        named = [("traits.source_priority", n) for n in self.traits.source_priority]
        named += [(f"traits.rules ({rule.trait})", n)
                  for rule in self.traits.rules for n in rule.sources]
        for where, name in named:
            if name not in names:
                raise ValueError(f"{where} names the source {name!r}, which is not declared "
                                 f"under sources")
        if self.catalog is not None:
            from tessera.catalog.load import merge_into

            merge_into(self)  # schemas and their evolution; identity paths and trait mappings
        return self

    def identifier(self, type_: str) -> IdentifierConfig | None:
        for ident in self.all_identifiers():
            if ident.type == type_:
                return ident
        return None

    def all_identifiers(self) -> list[IdentifierConfig]:
        """Configured identifier types merged over the built-in ones."""
        configured = {i.type: i for i in self.identity.identifiers}
        merged = [configured.pop(d.type, d) for d in BUILTIN_IDENTIFIERS]
        return merged + list(configured.values())


BUILTIN_IDENTIFIERS: list[IdentifierConfig] = [
    IdentifierConfig(
        type="user_id",
        limit=1,
        priority=10,
        paths=["data.userId", "data.user_id", "data.customer.user_id"],
    ),
    IdentifierConfig(
        type="email",
        limit=0,
        priority=30,
        normalize="email",
        paths=[
            "data.email",
            "data.traits.email",
            "data.context.traits.email",
            "data.properties.email",
            "data.customer.email",
        ],
    ),
    IdentifierConfig(
        type="phone",
        limit=0,
        priority=40,
        normalize="phone",
        paths=[
            "data.phone",
            "data.traits.phone",
            "data.context.traits.phone",
            "data.properties.phone",
            "data.customer.phone",
        ],
    ),
    IdentifierConfig(
        type="anonymous_id",
        limit=0,
        priority=90,
        paths=["data.anonymousId", "data.anonymous_id"],
    ),
]


class ConfigError(Exception):
    """The configuration file is unreadable or invalid; the message says where and why."""


def _format_validation_error(origin: str, exc: ValidationError) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        lines.append(f"  {path}: {reason}")
    return "\n".join(lines)


def parse_config(raw: Any, origin: str = "<config>") -> TesseraConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return TesseraConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(origin, exc)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> TesseraConfig:
    """Load ``path``, else ``$TESSERA_CONFIG``, else the demo defaults."""
    path = path or os.environ.get("TESSERA_CONFIG") or None
    if path is None:
        return default_config()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if isinstance(raw, dict):
        from tessera.catalog.load import include_files

        raw = include_files(raw, file.parent)  # catalog/*.yaml beside the file
    return parse_config(raw, str(file))


DEFAULT_CONFIG_FILE = Path(__file__).with_name("demo_config.yaml")


def default_config() -> TesseraConfig:
    """The demo's configuration, used when no file is given."""
    return load_config(DEFAULT_CONFIG_FILE)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("TESSERA_DATA_DIR") or ".tessera")
