"""JSON Schemas of event data: checking them, compiling them, and the evolution rules.

Validation is on the ingest path, so each (type, version) schema is compiled
once by ``jsonschema-rs`` (a validator in Rust: about three times faster
than ``fastjsonschema``'s generated Python, many times faster than an
interpreting validator); only an event that fails is validated again with
``jsonschema`` to name every problem with its JSON pointer.

Evolution: a new version must keep every consumer of the previous one
working and accept what producers of the previous one send. So adding an
optional field passes; removing a field, making an optional field required,
adding a required field, changing a type or dropping an enum value is refused,
each with the path and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema_rs
from jsonschema.validators import validator_for


@dataclass(frozen=True, slots=True)
class Problem:
    pointer: str
    """JSON pointer into the CloudEvent (``/data/after/postcode``)."""
    reason: str
    summary: str = ""
    """The reason without the offending value (for summaries: no personal data in them)."""


def check_schema(schema: dict[str, Any]) -> str | None:
    """None if ``schema`` is a valid JSON Schema, else why not."""
    try:
        validator_for(schema, default=jsonschema.Draft7Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        return f"not a valid JSON Schema at {where}: {exc.message}"
    return None


class CompiledSchema:
    """A schema compiled for the fast path, with a precise explainer for failures."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._slow = validator_for(schema, default=jsonschema.Draft7Validator)(schema)
        modern = "2020-12" in str(schema.get("$schema", ""))
        self._fast = (jsonschema_rs.Draft202012Validator if modern
                      else jsonschema_rs.Draft7Validator)(schema)
        self.is_valid: Callable[[Any], bool] = self._fast.is_valid

    def problems(self, data: Any, limit: int = 10) -> list[Problem]:
        """Every problem of ``data`` (up to ``limit``), pointers rooted at ``/data``."""
        out = []
        errors = sorted(self._slow.iter_errors(data), key=lambda e: list(e.absolute_path))
        for error in errors[:limit]:
            at = pointer("data", *error.absolute_path)
            out.append(Problem(at, error.message, f"{at}: {_summary(error)}"))
        if not out:  # the two validators disagree (a format, say): trust the fast one
            for error in list(self._fast.iter_errors(data))[:limit]:
                at = pointer("data", *error.instance_path)
                out.append(Problem(at, error.message, f"{at}: invalid"))
        return out


def _summary(error: jsonschema.ValidationError) -> str:
    keyword = str(error.validator)
    expected = error.validator_value
    if keyword == "required":
        return error.message  # names the missing field, not a value
    if keyword == "type":
        return f"must be of type {expected}"
    if keyword == "enum":
        return f"must be one of {expected}"
    if keyword == "additionalProperties":
        return "has fields the schema does not allow"
    if keyword in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
                   "exclusiveMinimum", "exclusiveMaximum", "pattern", "format", "const"):
        return f"fails {keyword} {expected!r}"
    return f"fails {keyword}"


def pointer(*parts: Any) -> str:
    """RFC 6901 JSON pointer of path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# -- evolution ---------------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> set[str] | None:
    t = schema.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


def compatibility_problems(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Why ``new`` cannot replace ``old`` (empty: it can).

    Both directions must hold: events of the old version still validate, and
    consumers written for the old version still find what they rely on.
    """
    where = path or "(top level)"
    problems: list[str] = []
    old_t, new_t = _types(old), _types(new)
    if old_t != new_t and old_t is not None:
        if new_t is None:
            pass  # the new version accepts any type: old events still validate
        else:
            problems.append(
                f"{where}: type changed from {_show(old_t)} to {_show(new_t)}"
            )
            return problems
    elif old_t is None and new_t is not None:
        problems.append(f"{where}: type restricted to {_show(new_t)} (was unrestricted)")
        return problems
    if "enum" in old or "enum" in new:
        old_enum, new_enum = old.get("enum"), new.get("enum")
        if old_enum is not None and new_enum is not None:
            removed = [v for v in old_enum if v not in new_enum]
            if removed:  # added values are fine: consumers must tolerate new values
                problems.append(f"{where}: enum values removed: {removed}")
        elif new_enum is not None:
            problems.append(f"{where}: enum added (values accepted before are refused)")
    if "const" in new and old.get("const") != new.get("const"):
        problems.append(f"{where}: const changed")
    for keyword in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
        if keyword in new and (keyword not in old or new[keyword] > old[keyword]):
            problems.append(f"{where}: {keyword} tightened to {new[keyword]}")
    for keyword in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
        if keyword in new and (keyword not in old or new[keyword] < old[keyword]):
            problems.append(f"{where}: {keyword} tightened to {new[keyword]}")
    if "pattern" in new and new.get("pattern") != old.get("pattern"):
        problems.append(f"{where}: pattern changed to {new['pattern']!r}")
    if (old_t is None or "object" in old_t) and ("properties" in old or "properties" in new
                                                 or "required" in old or "required" in new):
        problems += _object_problems(old, new, path)
    if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
        problems += compatibility_problems(old["items"], new["items"], f"{path}/items"
                                           if path else "/items")
    return problems


def _object_problems(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    old_props: dict[str, Any] = old.get("properties") or {}
    new_props: dict[str, Any] = new.get("properties") or {}
    old_req, new_req = set(old.get("required") or ()), set(new.get("required") or ())
    closed_new = new.get("additionalProperties") is False
    for name in sorted(old_props):
        sub = f"{path}/{name}"
        if name not in new_props:
            if name in old_req:
                problems.append(f"{sub}: required field removed (consumers of the previous "
                                f"version rely on it)")
            elif closed_new:
                problems.append(f"{sub}: field removed while additionalProperties is false "
                                f"(events of the previous version would be refused)")
            continue
        if isinstance(old_props[name], dict) and isinstance(new_props[name], dict):
            problems += compatibility_problems(old_props[name], new_props[name], sub)
    for name in sorted(old_req - new_req):
        if name in new_props:
            problems.append(f"{path}/{name}: no longer required (consumers of the previous "
                            f"version rely on it)")
    for name in sorted(new_req - old_req):
        if name in old_props:
            problems.append(f"{path}/{name}: optional field made required (events of the "
                            f"previous version may lack it)")
        else:
            problems.append(f"{path}/{name}: required field added (events of the previous "
                            f"version lack it); add it as optional")
    if old.get("additionalProperties") is not False and closed_new:
        problems.append(f"{path or '(top level)'}: additionalProperties set to false "
                        f"(events of the previous version may carry other fields)")
    return problems


def _show(types: set[str]) -> str:
    return "/".join(sorted(types))
