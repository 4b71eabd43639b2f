"""Profiles: traits, survivorship and timelines."""
