"""The entity-change and process-step envelopes, as CloudEvents.

A **fat** entity change carries the whole story, as Debezium's envelope does::

    {"op": "u", "entity": "member", "id": "M-1001", "version": 7,
     "before": {...}, "after": {...}, "changed": ["address"]}

``op`` is ``c`` (create), ``u`` (update), ``d`` (delete) or ``r`` (a snapshot
read). A **notification** carries only what happened to which entity::

    {"op": "u", "entity": "member", "id": "M-1001", "version": 7}

and a subscriber that needs the state fetches it from the owning service
(the catalog's resolver: a claim check). A **process step** says that an
instance of a business process reached a step::

    {"process": "roadside_assistance", "step": "driver_assigned",
     "instance_id": "T-77", ...the step's own fields}

Entity-change ids are deterministic when the caller gives a version (the
same change sent twice is one event); otherwise, and for process steps, the
id is a random UUID fixed when the event is built, so retries reuse it.
Pass ``id=`` for ids of your own (an outbox row's, say).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

OPS = {"create": "c", "update": "u", "delete": "d", "snapshot": "r",
       "c": "c", "u": "u", "d": "d", "r": "r"}


def op_code(op: str) -> str:
    try:
        return OPS[op]
    except KeyError:
        raise ValueError(f"op must be one of create/update/delete/snapshot (c/u/d/r), "
                         f"got {op!r}") from None


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Top-level fields whose value differs between ``before`` and ``after``, sorted."""
    b, a = before or {}, after or {}
    return sorted(k for k in set(b) | set(a) if b.get(k) != a.get(k) or (k in b) != (k in a))


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def stable_id(*parts: Any) -> str:
    """A deterministic id from the parts (the same change gives the same id)."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def entity_change_data(entity: str, entity_id: str, op: str, *,
                       before: Mapping[str, Any] | None = None,
                       after: Mapping[str, Any] | None = None,
                       version: int | str | None = None,
                       notification: bool = False,
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    code = op_code(op)
    data: dict[str, Any] = {"op": code, "entity": entity, "id": str(entity_id)}
    if version is not None:
        data["version"] = version
    if not notification:
        data["before"] = dict(before) if before is not None else None
        data["after"] = dict(after) if after is not None else None
        data["changed"] = changed_fields(before, after)
    if extra:
        data.update(extra)
    return data


def entity_change_event(type: str, source: str, entity: str, entity_id: str, op: str, *,
                        before: Mapping[str, Any] | None = None,
                        after: Mapping[str, Any] | None = None,
                        version: int | str | None = None,
                        notification: bool = False,
                        id: str | None = None,
                        time: str | None = None,
                        dataschema: str | None = None,
                        extensions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A structured-mode CloudEvent for an entity change (fat unless ``notification``)."""
    data = entity_change_data(entity, entity_id, op, before=before, after=after,
                              version=version, notification=notification)
    if id is None:
        id = (stable_id(type, source, entity, entity_id, version) if version is not None
              else str(uuid.uuid4()))
    return _cloudevent(type, source, id, time, data, dataschema, f"{entity}/{entity_id}",
                       extensions)


def process_step_event(type: str, source: str, process: str, step: str, instance_id: str,
                       data: Mapping[str, Any] | None = None, *,
                       id: str | None = None, time: str | None = None,
                       dataschema: str | None = None,
                       extensions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A structured-mode CloudEvent saying that a process instance reached a step."""
    body = {"process": process, "step": step, "instance_id": str(instance_id), **(data or {})}
    if id is None:  # a process may pass the same step twice: give an id to deduplicate
        id = str(uuid.uuid4())
    return _cloudevent(type, source, id, time, body, dataschema, f"{process}/{instance_id}",
                       extensions)


def _cloudevent(type: str, source: str, id: str, time: str | None, data: dict[str, Any],
                dataschema: str | None, subject: str,
                extensions: Mapping[str, Any] | None) -> dict[str, Any]:
    event: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type,
                             "time": time or now_iso(), "subject": subject,
                             "datacontenttype": "application/json"}
    if dataschema:
        event["dataschema"] = dataschema
    if extensions:
        event.update(extensions)
    event["data"] = data
    return event
