"""Tessera: an open-source, event-driven, composable Customer Data Platform."""

__version__ = "0.1.0"
