"""An AsyncAPI 3.0 document of the catalog: one channel and one message per event type.

Messages are CloudEvents (structured mode); each message's payload schema is
the CloudEvents envelope with ``data`` set to the latest schema version of
its type. Earlier versions are under ``components.schemas`` as
``<type>.v<N>``. Catalog facts that AsyncAPI has no field for (owning
domain and source, kind, PII fields, trait mappings, the resolver) are
``x-tessera-*`` extensions.
"""

from __future__ import annotations

import re
from typing import Any

from tessera.catalog.model import EventType

_KEY = re.compile(r"[^A-Za-z0-9_.\-]")


def _key(type_: str) -> str:
    return _KEY.sub("_", type_)


def _envelope(event: EventType, data_schema: dict[str, Any], uri: str | None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "const": event.type},
        "time": {"type": "string", "format": "date-time"},
        "subject": {"type": "string"},
        "datacontenttype": {"type": "string"},
        "data": data_schema,
    }
    if uri:
        props["dataschema"] = {"type": "string", "const": uri}
    return {"type": "object", "required": ["specversion", "id", "source", "type"],
            "properties": props}


def asyncapi_document(events: list[EventType], title: str = "Tessera event catalog",
                      version: str = "1.0.0", server_url: str | None = None) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for event in sorted(events, key=lambda e: e.type):
        key = _key(event.type)
        latest = event.versions[-1] if event.versions else None
        data_schema = latest.schema_ if latest else {}
        for v in event.versions:
            schemas[f"{key}.v{v.version}"] = v.schema_
        extensions: dict[str, Any] = {
            "x-tessera-domain": event.domain,
            "x-tessera-source": event.source,
            "x-tessera-kind": event.kind,
            "x-tessera-pii": event.pii,
            "x-tessera-traits": event.traits,
            "x-tessera-identity": event.identity,
            "x-tessera-versions": [
                {"version": v.version, "dataschema": event.dataschema_of(v),
                 "schema": {"$ref": f"#/components/schemas/{key}.v{v.version}"}}
                for v in event.versions],
        }
        if event.kind == "entity_change":
            extensions["x-tessera-entity"] = {"entity": event.entity,
                                              "operation": event.operation,
                                              "delivery": event.delivery}
        if event.kind == "process_step":
            extensions["x-tessera-process"] = {"process": event.process, "step": event.step}
        if event.resolver is not None:
            extensions["x-tessera-resolver"] = {"url": event.resolver.url}
        messages[key] = {
            "name": event.type,
            "title": event.type,
            "summary": event.description or event.type,
            "contentType": "application/cloudevents+json",
            "payload": _envelope(event, data_schema,
                                 event.dataschema_of(latest) if latest else None),
            **extensions,
        }
        channels[key] = {
            "address": event.type,
            "title": event.type,
            "description": event.description or f"Events of type {event.type}",
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[f"receive.{key}"] = {
            "action": "receive",
            "title": f"Receive {event.type}",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
        if event.domain:
            channels[key]["tags"] = [{"name": event.domain}]
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version,
                 "description": "Event types of the Tessera event catalog, as CloudEvents."},
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
    if server_url:
        doc["servers"] = {"tessera": {"host": server_url.split("://", 1)[-1].rstrip("/"),
                                      "protocol": server_url.split("://", 1)[0],
                                      "pathname": "/v1/events"}}
    return doc
