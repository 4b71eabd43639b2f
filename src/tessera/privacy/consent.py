"""Consent per purpose, kept as profile traits named ``consent.<purpose>``.

A trait keeps its value with the source and event time that set it, and
survivorship already resolves conflicting sources by time and priority, so
consent needs no store of its own: the latest decision wins, and the profile
shows who recorded it and when. Values are booleans; anything else counts as
no consent. Consent is set by Segment's ``context.consent`` (both the
``categoryPreferences`` object of Segment's consent management and a plain
``{purpose: bool}`` object are read), by ``data.consent`` of any event, or by
a trait mapping of a consent event declared in the catalog.

:func:`has_consent` is what every place that acts on a person asks
(activation, next best action, audience rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.store.base import Trait

PURPOSES = ("marketing_email", "marketing_sms", "personalization", "analytics")
PREFIX = "consent."


def trait_name(purpose: str) -> str:
    return PREFIX + purpose


def has_consent(traits: Mapping[str, Any], purpose: str) -> bool:
    """True only if the person's latest decision for ``purpose`` is ``true``.

    ``traits`` maps names to values, to the store's :class:`~tessera.store.base.Trait`,
    or to the profile API's trait objects (``value`` with its ``source``). No
    decision means no consent, and so does any value but ``true``: ``"yes"``,
    ``1``, or an object such as ``{"value": true}`` that an event put there.
    Activation, next best action and audiences all ask this, so they never
    disagree about one person.
    """
    found = traits.get(trait_name(purpose))
    if isinstance(found, Trait):
        found = found.value
    elif isinstance(found, dict) and "value" in found and "source" in found:
        found = found["value"]  # {"value": ..., "source": ..., "time": ...} of the API
    return found is True


def consent_traits(consent: Any) -> dict[str, bool]:
    """``consent.<purpose>`` traits from a consent object (unknown purposes are ignored)."""
    if not isinstance(consent, dict):
        return {}
    out: dict[str, bool] = {}
    for source in (consent, consent.get("categoryPreferences")):
        if not isinstance(source, dict):
            continue
        for purpose, granted in source.items():
            key = str(purpose).strip().lower()
            if key in PURPOSES and isinstance(granted, bool):
                out[trait_name(key)] = granted
    return out
