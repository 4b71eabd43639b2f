"""The event catalog as configuration: which event types exist, who owns them, their schemas.

An entry describes one event type (``com.example.membership.member.address_changed``,
or a Segment ``track`` event name): the owning domain and source, its kind
(an entity change or a process step), the JSON Schema of its ``data`` in
numbered versions, where identifiers are in the payload, which fields are
personal data, which payload paths become profile traits, and, for
notification events, how to fetch the entity they point at.

These models import nothing else from Tessera, so that :mod:`tessera.config`
can import them. Schemas and compatibility are checked in
:mod:`tessera.catalog.schemas`; here only the shape of the documents.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ValidationMode = Literal["enforce", "quarantine", "allow"]
UnknownTypes = Literal["allow", "quarantine", "reject"]
Operation = Literal["create", "update", "delete", "snapshot"]
OPS = {"create": "c", "update": "u", "delete": "d", "snapshot": "r"}
"""Operation names and their one-letter codes in the entity-change envelope (as Debezium)."""

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SchemaVersion(Model):
    """One version of an event type's data schema."""

    version: int = Field(ge=1)
    schema_: dict[str, Any] = Field(alias="schema")
    """A JSON Schema (draft 7 or 2020-12 keywords) of the event's ``data``."""
    dataschema: str | None = None
    """The ``dataschema`` URI that names this version; default ``urn:tessera:schema:TYPE:vN``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class Resolver(Model):
    """Where to fetch the entity a notification event points at (claim check).

    ``url`` is a template on the owning service: ``{id}``, ``{entity}``,
    ``{version}`` and ``{type}`` are filled from the event.
    """

    url: str = Field(min_length=1)
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    backoff_seconds: float = Field(default=0.1, ge=0, le=10)
    cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the resolver URL must be http:// or https://")
        return url


class EventType(Model):
    """One event type of the catalog."""

    type: str = Field(min_length=1, max_length=256)
    description: str = ""
    domain: str | None = None
    """Owning domain (``membership``); defaults to the file's ``domain``."""
    source: str | None = None
    """Owning Tessera source (the sender of these events); defaults to the file's ``source``."""
    kind: Literal["entity_change", "process_step", "other"] = "other"
    entity: str | None = None
    """Entity changes: the entity's name (``member``)."""
    operation: Operation | None = None
    """Entity changes: create, update, delete, snapshot; none if one type carries any (``op``)."""
    delivery: Literal["fat", "notification"] = "fat"
    """Entity changes: fat events carry before/after; notifications only type, id and version."""
    process: str | None = None
    """Process steps: the process (``roadside_assistance``)."""
    step: str | None = None
    """Process steps: the step (``driver_assigned``)."""
    versions: list[SchemaVersion] = Field(default_factory=list)
    """Schema versions, oldest first; each must be compatible with the one before."""
    identity: dict[str, list[str]] = Field(default_factory=dict)
    """Identifier type to the paths where it is found (``{member_number: [data.after.number]}``)."""
    pii: list[str] = Field(default_factory=list)
    """Paths of personal data (``data.after.email``)."""
    traits: dict[str, str] = Field(default_factory=dict)
    """Profile trait to the payload path it is copied from."""
    resolver: Resolver | None = None

    @field_validator("pii")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not _PATH.match(path):
                raise ValueError(f"{path!r} is not a dotted path (data.after.email)")
        return paths

    @field_validator("traits")
    @classmethod
    def _trait_paths(cls, traits: dict[str, str]) -> dict[str, str]:
        for trait, path in traits.items():
            if not _PATH.match(path):
                raise ValueError(f"trait {trait!r}: {path!r} is not a dotted path (data.city)")
        return traits

    @field_validator("identity")
    @classmethod
    def _identity_paths(cls, identity: dict[str, list[str]]) -> dict[str, list[str]]:
        for type_, paths in identity.items():
            if not paths:
                raise ValueError(f"identifier {type_!r} needs at least one path")
            for path in paths:
                if not _PATH.match(path):
                    raise ValueError(f"identifier {type_!r}: {path!r} is not a dotted path")
        return identity

    @model_validator(mode="after")
    def _kind_fields(self) -> EventType:
        if self.kind == "entity_change" and not self.entity:
            raise ValueError(f"{self.type}: an entity change needs 'entity'")
        if self.kind == "process_step" and not (self.process and self.step):
            raise ValueError(f"{self.type}: a process step needs 'process' and 'step'")
        if self.delivery == "notification" and self.kind != "entity_change":
            raise ValueError(f"{self.type}: only entity changes can be notification events")
        numbers = [v.version for v in self.versions]
        if numbers != sorted(set(numbers)):
            raise ValueError(f"{self.type}: schema versions must be unique and in increasing order")
        return self

    def dataschema_of(self, version: SchemaVersion) -> str:
        return version.dataschema or f"urn:tessera:schema:{self.type}:v{version.version}"


class CatalogFile(Model):
    """A ``catalog/*.yaml`` file: defaults for its events, and the events."""

    domain: str | None = None
    source: str | None = None
    events: list[EventType] = Field(default_factory=list)


class CatalogConfig(Model):
    """The ``catalog:`` section of ``tessera.yaml``.

    Event types come from ``events`` here and from the files matching ``files``
    (relative to the configuration file; ``catalog/*.yaml`` by default).
    ``validation`` and ``unknown_types`` are the defaults of sources that do
    not set their own.
    """

    files: list[str] = Field(default_factory=lambda: ["catalog/*.yaml"])
    events: list[EventType] = Field(default_factory=list)
    validation: ValidationMode = "enforce"
    unknown_types: UnknownTypes = "allow"
