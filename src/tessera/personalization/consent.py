"""Reading consent: the one place personalization asks whether a profile consented to a purpose.

Consent capture belongs to the trust and privacy part of Tessera. Until it
offers a consent record per purpose, consent is read from a profile trait:
purpose ``marketing_email`` is the trait ``consent.marketing_email``
(``personalization.consent_trait_prefix``), set by a trait mapping from the
events of the system that collects it. Only ``true`` (or the text ``"granted"``
/ ``"yes"``) counts as consent; a missing trait is no consent.

Rules and decisions call :meth:`ConsentReader.granted` and nothing else, so
switching to another source of consent means another reader here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

GRANTED_TEXT = frozenset({"granted", "yes", "true", "opt_in", "opted_in"})


class ConsentReader(Protocol):
    def granted(self, traits: dict[str, Any], purpose: str) -> bool:
        """Whether the profile with these trait values consented to ``purpose``."""
        ...


class TraitConsent:
    """Consent to a purpose is a profile trait ``<prefix><purpose>``."""

    def __init__(self, prefix: str = "consent.") -> None:
        self.prefix = prefix

    def granted(self, traits: dict[str, Any], purpose: str) -> bool:
        value = traits.get(self.prefix + purpose)
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value.strip().lower() in GRANTED_TEXT
        return False

    def for_profile(self, traits: dict[str, Any]) -> Callable[[str], bool]:
        return lambda purpose: self.granted(traits, purpose)
