"""The demo's event catalog: the membership system's tier events, and one sender that breaks it.

The demo's server reads ``catalog/*.yaml`` beside its configuration file, so
:func:`write_catalog` puts the schemas of ``member.renewed`` and
``member.tier_changed`` there before the server starts. Every event the
simulation sends fits them (the catalog validates in ``enforce`` mode, so one
that did not would fail the demo). After the load, :func:`send_malformed`
plays a misconfigured integration: one renewal whose ``auto_renew`` is text
and whose tier is unknown. Ingest refuses it with a 400 that names each field
and why, and the refusal is counted under the type's violations, which the
console's Catalog page shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

from tessera.demo.scenario import TIERS

RENEWED = "com.example.membership.member.renewed"
TIER_CHANGED = "com.example.membership.member.tier_changed"
FILE = Path("catalog") / "membership.yaml"

_MEMBER_NUMBER = {"type": "string", "minLength": 1}
_TIER = {"enum": list(TIERS)}
CATALOG: dict[str, Any] = {
    "domain": "membership",
    "source": "membership",
    "events": [
        {"type": RENEWED, "description": "A membership was renewed for another year.",
         "kind": "entity_change", "entity": "member", "operation": "update",
         "versions": [{"version": 1, "schema": {
             "type": "object", "required": ["member_number", "tier", "valid_until"],
             "properties": {"member_number": _MEMBER_NUMBER, "tier": _TIER,
                            "valid_until": {"type": "string", "format": "date"},
                            "auto_renew": {"type": "boolean"}}}}]},
        {"type": TIER_CHANGED, "description": "A member moved to another tier.",
         "kind": "entity_change", "entity": "member", "operation": "update",
         "versions": [{"version": 1, "schema": {
             "type": "object", "required": ["member_number", "tier"],
             "properties": {"member_number": _MEMBER_NUMBER, "tier": _TIER,
                            "previous_tier": _TIER}}}]},
    ],
}
MALFORMED: dict[str, Any] = {
    "specversion": "1.0", "id": "demo-malformed-renewal", "type": RENEWED,
    "source": "https://membership.example.com/members", "time": "2026-01-15T09:00:00Z",
    "data": {"member_number": "0000000000", "tier": "gold", "valid_until": "2027-01-15",
             "auto_renew": "yes"},
}
"""A renewal as a misconfigured integration sends it: a tier the membership system does not
have, and ``auto_renew`` as text."""


def write_catalog(config_file: Path) -> Path:
    """The catalog file beside the demo's configuration file (read when the server starts)."""
    path = config_file.parent / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# the membership system's tier events (written by the demo)\n"
                    + yaml.safe_dump(CATALOG, sort_keys=False))
    return path


async def send_malformed(client: httpx.AsyncClient, write_key: str) -> list[str] | None:
    """Send :data:`MALFORMED`; the refusal's field errors (``field: reason``), or None if
    it was not refused (then the catalog does not work, and the demo says so)."""
    response = await client.post(
        "/v1/events", json=MALFORMED,
        headers={"Authorization": f"Bearer {write_key}",
                 "Content-Type": "application/cloudevents+json"})
    if response.status_code != 400:
        return None
    body = response.json()
    return [f"{e.get('field')}: {e.get('reason')}" for e in body.get("errors", [])]
