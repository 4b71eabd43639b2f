"""Reading consent: the one place personalization asks whether a profile consented to a purpose.

Consent is recorded by Tessera's privacy part as profile traits
``consent.<purpose>`` (see ``docs/privacy.md``), and
:func:`tessera.privacy.consent.has_consent` is the question every place that
acts on a person asks: only ``true`` is consent, no decision is none. Rules
(``{consent: marketing_email}``) and decisions (``requires_consent``) go
through :class:`TraitConsent`, which asks exactly that; a configuration with
another ``personalization.consent_trait_prefix`` reads ``<prefix><purpose>``
with the same meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tessera.privacy.consent import PREFIX, has_consent


class ConsentReader(Protocol):
    def granted(self, traits: Mapping[str, Any], purpose: str) -> bool:
        """Whether the profile with these trait values consented to ``purpose``."""
        ...


class TraitConsent:
    """Consent to a purpose is the profile trait ``<prefix><purpose>`` being ``true``."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def granted(self, traits: Mapping[str, Any], purpose: str) -> bool:
        if self.prefix == PREFIX:
            return has_consent(traits, purpose)
        return traits.get(self.prefix + purpose) is True

    def for_profile(self, traits: Mapping[str, Any]) -> Callable[[str], bool]:
        return lambda purpose: self.granted(traits, purpose)
