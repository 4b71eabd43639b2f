"""Response bodies of the main operations, as they appear in ``/openapi.json``.

The handlers build their JSON directly (it is faster than validating a model
per answer), so these models are documentation; but the bounded schemathesis
run (``tests/api/test_schemathesis.py``) checks every answer against them, so
they cannot drift from what the handlers send. Fields an answer may leave out
have a default.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Accepted(BaseModel):
    accepted: int = Field(ge=0, description="Events stored now (or held back by the catalog)")
    duplicates: int = Field(ge=0, description="Events the bus already had (same source and id)")
    quarantined: int | None = Field(default=None, ge=0,
                                    description="Events the catalog quarantined")
    quarantined_ids: list[str] | None = None


class CloudEventsAccepted(_Accepted):
    """What ``/v1/events`` answers once the events are durable on the bus."""

    ids: list[str] = Field(description="The ``id`` of every event of the request, in order")


class SegmentAccepted(_Accepted):
    """What the Segment endpoints answer once the messages are durable on the bus."""

    success: bool


class TraitValue(BaseModel):
    value: Any = Field(description="Any JSON value")
    source: str
    time: str = Field(description="Event time of the value (ISO 8601)")


class IdentityLinkOut(BaseModel):
    type: str
    value: str
    source: str
    linked_at: str
    event_uid: str = Field(description="The event that linked it")
    reason: str


class MergedProfile(BaseModel):
    profile_id: str
    event_uid: str
    at: str
    reason: str


class ProfileOut(BaseModel):
    """A unified profile."""

    id: str
    created_at: str
    updated_at: str
    event_count: int = Field(ge=0)
    traits: dict[str, TraitValue]
    identities: list[IdentityLinkOut]
    merged_from: list[MergedProfile]


class ProfileIdentities(BaseModel):
    profile_id: str
    identities: list[IdentityLinkOut]
    merged_from: list[MergedProfile]


class EventsPage(BaseModel):
    profile_id: str
    events: list[dict[str, Any]] = Field(description="Structured CloudEvents, newest first")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last")


class ExportedEvent(BaseModel):
    event_uid: str
    type: str
    source: str
    time: str
    received_at: str
    event: dict[str, Any] = Field(description="The event as received")


class ExportedMerge(BaseModel):
    profile_id: str
    merged_at: str
    event_uid: str
    reason: str


class ExportedJourney(BaseModel):
    journey: str
    status: str
    step: Any
    entered_at: str
    updated_at: str
    context: dict[str, Any]


class AccessExport(BaseModel):
    """Everything held about one resolved person."""

    profile_id: str
    exported_at: str
    created_at: str
    updated_at: str
    event_count: int = Field(ge=0)
    identifiers: list[IdentityLinkOut]
    traits: dict[str, TraitValue]
    consent: dict[str, TraitValue] = Field(description="Purpose to the latest decision")
    merged_profiles: list[ExportedMerge]
    timeline: list[ExportedEvent]
    journeys: list[ExportedJourney]


class SubscriptionStats(BaseModel):
    lag: int | None = Field(description="Events waiting; null before a worker started it")
    in_flight: int
    delivered: int
    failed_attempts: int
    dead_lettered: int
    dead_letters_pending: int
    filtered_out: int = Field(description="Events not delivered: filter, condition or consent")
    last_error: str | None
    last_error_at: float | None
    last_success_at: float | None


class SubscriptionOut(BaseModel):
    """A subscription: its definition (secrets masked) and its delivery figures.

    The definition's fields (``filter``, ``destination``, ``shape``, ``purpose`` ...)
    are those of ``subscriptions`` in ``tessera.yaml``; see docs/activation.md.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    origin: str = Field(description="api, config or journey")
    group: str
    paused: bool
    created_at: float | None
    stats: SubscriptionStats


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]
