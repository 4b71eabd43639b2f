"""Evaluating filters, conditions and templates against an event and a profile.

No code is ever evaluated: a path walks dictionaries (``data.address.city``,
``profile.traits.email``, ``data.items.0.sku``), operators compare values, and a
template replaces ``{{ path }}`` placeholders. The context an expression sees
is :func:`context`: the CloudEvent's attributes and ``data`` at the top level,
``profile`` (a snapshot, see :func:`profile_snapshot`) and, in journeys,
``journey`` and ``trigger``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from tessera.activation.model import Condition, Filter
from tessera.events.envelope import Event
from tessera.store.base import Profile

_MISSING = object()
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")

CHANNEL_IDENTIFIERS = {"sms": "phone", "phone": "phone", "whatsapp": "phone", "voice": "phone",
                       "email": "email", "push": "user_id", "app": "user_id"}


def get(ctx: Any, path: str) -> Any:
    """The value at a dotted path, or ``_MISSING``."""
    node = ctx
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def lookup(ctx: Any, path: str, default: Any = None) -> Any:
    value = get(ctx, path)
    return default if value is _MISSING else value


def profile_snapshot(profile: Profile | None) -> dict[str, Any] | None:
    """What deliveries and conditions see of a profile: id, trait values, identifiers,
    and the contact for the preferred channel (``preferred_channel`` trait)."""
    if profile is None:
        return None
    identifiers: dict[str, list[str]] = {}
    for link in profile.identities:
        identifiers.setdefault(link.type, []).append(link.value)
    traits = {name: t.value for name, t in profile.traits.items()}
    contact = {
        channel: identifiers[ident][0]
        for channel, ident in CHANNEL_IDENTIFIERS.items()
        if identifiers.get(ident)
    }
    channel = traits.get("preferred_channel")
    if not isinstance(channel, str) or channel not in contact:
        channel = next((c for c in ("email", "sms", "push") if c in contact), None)
    return {
        "id": profile.id,
        "traits": traits,
        "identifiers": identifiers,
        "contact": contact,
        "preferred_channel": channel,
        "preferred_contact": contact.get(channel) if channel else None,
        "updated_at": profile.updated_at,
        "event_count": profile.event_count,
    }


def context(
    event: Event, profile: dict[str, Any] | None, cloudevent: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``cloudevent``: ``event.to_cloudevent()`` when the caller has it already (copied)."""
    ctx = event.to_cloudevent() if cloudevent is None else dict(cloudevent)
    ctx["uid"] = event.uid
    ctx["profile"] = profile
    ctx.update(extra)
    return ctx


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING and actual is not None) == bool(expected)
    if actual is _MISSING:
        return op == "ne"
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "contains":
        if isinstance(actual, str | list | dict):
            return expected in actual
        return False
    if op == "like":
        return fnmatchcase(str(actual), str(expected))
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
    except TypeError:
        return False  # comparing a number with text: not a match
    raise ValueError(f"unknown operator {op!r}")


def holds(condition: Condition, ctx: dict[str, Any]) -> bool:
    if condition.all_ is not None:
        return all(holds(c, ctx) for c in condition.all_)
    if condition.any_ is not None:
        return any(holds(c, ctx) for c in condition.any_)
    if condition.not_ is not None:
        return not holds(condition.not_, ctx)
    assert condition.path is not None
    actual = get(ctx, condition.path)
    return all(_compare(op, actual, expected) for op, expected in condition.operators())


def _any_match(value: Any, patterns: list[str] | str) -> bool:
    if value is None:
        return False
    text = str(value)
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatchcase(text, p) for p in patterns)


def matches_envelope(flt: Filter, event: Event) -> bool:
    """The parts of a filter that need no profile: types, sources, attributes."""
    if flt.types and not _any_match(event.type, flt.types):
        return False
    if flt.sources and not (
        _any_match(event.source_name, flt.sources) or _any_match(event.source, flt.sources)
    ):
        return False
    if flt.attributes:
        attrs = event.to_cloudevent()
        for name, patterns in flt.attributes.items():
            if not _any_match(attrs.get(name), patterns):
                return False
    return True


def matches(
    flt: Filter, event: Event, ctx: dict[str, Any] | Callable[[], dict[str, Any]]
) -> bool:
    if not matches_envelope(flt, event):
        return False
    if flt.condition is None:
        return True
    return holds(flt.condition, ctx() if callable(ctx) else ctx)


def render(template: Any, ctx: dict[str, Any]) -> Any:
    """Replace ``{{ path }}`` placeholders. A string that is one placeholder keeps the
    value's type (a number stays a number); placeholders inside text become text."""
    if isinstance(template, dict):
        return {k: render(v, ctx) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, ctx) for v in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole is not None:
        return lookup(ctx, whole.group(1))

    def one(match: re.Match[str]) -> str:
        value = lookup(ctx, match.group(1))
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(one, template)
