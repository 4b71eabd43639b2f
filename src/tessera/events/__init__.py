"""Events: the internal envelope, the CloudEvents and Segment-spec mappings."""

EVENTS_TOPIC = "events"
"""The bus topic every ingested event is appended to."""
