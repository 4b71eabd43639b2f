"""Observability: Prometheus metrics, request ids in structured logs, optional tracing."""
