"""The event catalog: event types, their owners and schemas, validation at ingest, AsyncAPI."""
