"""What a subscription delivers: the event as a structured CloudEvent, with ``data``
shaped by the subscription.

- ``fat``: ``data`` is ``{"event": <the event's data>, "profile": <snapshot>}``
- ``event``: the event as it was ingested
- ``notification``: ids only: ``{"id", "source", "type", "uid", "profile_id"}``
- ``{"fields": {name: path}}``: a projection of the event and the profile
- ``{"template": {...}}``: values with ``{{ path }}`` placeholders

Every delivered CloudEvent keeps the event's ``id``, ``source``, ``type`` and
``time`` and adds the extension attributes ``tesserasubscription`` and, when
the profile is known, ``tesseraprofileid``.
"""

from __future__ import annotations

from typing import Any

from tessera.activation.expr import lookup, render
from tessera.activation.model import Shape, ShapeSpec
from tessera.events.envelope import Event


def shape(
    subscription: str,
    spec: ShapeSpec,
    event: Event,
    profile: dict[str, Any] | None,
    ctx: dict[str, Any] | None,
    profile_id: str | None = None,
    cloudevent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``ctx`` (see :func:`~tessera.activation.expr.context`) is needed by a projection or
    a template only; ``cloudevent``, ``event.to_cloudevent()`` if the caller has it, is
    used as the body (and changed)."""
    out = event.to_cloudevent() if cloudevent is None else cloudevent
    out["tesserasubscription"] = subscription
    pid = profile["id"] if profile else profile_id
    if pid:
        out["tesseraprofileid"] = pid
    if spec == "event":
        return out
    out["datacontenttype"] = "application/json"
    out.pop("dataschema", None)
    if spec == "fat":
        out["data"] = {"event": event.data, "profile": profile}
    elif spec == "notification":
        out["data"] = {"id": event.id, "source": event.source, "type": event.type,
                       "uid": event.uid, "profile_id": pid}
    elif isinstance(spec, Shape) and spec.fields is not None:
        assert ctx is not None
        out["data"] = {name: lookup(ctx, path) for name, path in spec.fields.items()}
    elif isinstance(spec, Shape) and spec.template is not None:
        assert ctx is not None
        out["data"] = render(spec.template, ctx)
    return out
