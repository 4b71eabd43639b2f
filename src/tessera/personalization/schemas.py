"""The documented bodies of the personalization API (``/openapi.json``).

The endpoints build their answers as plain dictionaries (the decision path is
hot); these models only describe them, and ``tests/personalization`` checks
real answers against the published schemas.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ChosenAction(BaseModel):
    rank: int
    action: str
    title: str
    channel: str
    score: float
    priority: float
    reasons: list[str] = Field(description="Why it was eligible, within caps, and scored so")
    payload: dict[str, Any]


class RejectedAction(BaseModel):
    action: str
    stage: str = Field(description="channel, validity, consent, eligibility, suppressed or cap")
    reason: str


class NextBestAction(BaseModel):
    profile_id: str
    channel: str
    actions: list[ChosenAction]
    rejected: list[RejectedAction] | None = Field(None, description="With explain=true")
    ranked_out: list[str] | None = Field(None, description="With explain=true: eligible, "
                                                           "within caps, below the top N")


class SegmentMembership(BaseModel):
    segment: str
    since: str


class ProfileSegments(BaseModel):
    profile_id: str
    segments: list[SegmentMembership]
    computed_traits: dict[str, Any]


class Member(BaseModel):
    profile_id: str
    since: str


class MembersPage(BaseModel):
    segment: str
    members: list[Member]
    next_cursor: str | None


class SegmentOut(BaseModel):
    name: str
    description: str
    rule: dict[str, Any]
    size: int
    origin: str = Field(description="config (tessera.yaml) or api (saved through the API)")
    evaluated: bool = Field(description="Every existing profile has been evaluated against "
                                        "this definition (a saved audience is filled in by "
                                        "the personalization processor within seconds)")
    created_at: str | None = Field(None, description="Saved audiences only")
    updated_at: str | None = Field(None, description="Saved audiences only")


class SegmentList(BaseModel):
    segments: list[SegmentOut]


AudienceOut = SegmentOut


class AudienceList(BaseModel):
    audiences: list[AudienceOut]


class PreviewOut(BaseModel):
    sampled: int
    matched: int
    profiles: int
    estimated_size: int
    exact: bool
    examples: list[str]


DECISION_PARAMETERS = [
    {"name": "channel", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "The channel to decide for, e.g. contact_center"},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 3}},
    {"name": "explain", "in": "query", "required": False,
     "schema": {"type": "boolean", "default": False},
     "description": "Also list the actions left out, and why"},
]
PREVIEW_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["rule"], "properties": {
        "rule": {"type": "object", "description": "An audience rule (docs/personalization.md)"},
        "sample": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 10_000},
        "examples": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10}}}}}}}
AUDIENCE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["name", "rule"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,99}$"},
        "description": {"type": "string"},
        "rule": {"type": "object", "description": "An audience rule (docs/personalization.md)"},
    }}}}}}
