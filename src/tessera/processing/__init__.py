"""Processors: consumer groups that turn the event log into profiles."""
