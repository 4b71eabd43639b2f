"""The HTTP API: ingest, profiles, health."""
