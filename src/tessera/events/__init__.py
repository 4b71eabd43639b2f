"""Events: the internal envelope, the CloudEvents and Segment-spec mappings."""

EVENTS_TOPIC = "events"
"""The bus topic every ingested event is appended to."""

DERIVED_TOPIC = "derived"
"""The bus topic of what Tessera derives (identity.merged, profile.updated, journey actions)."""
