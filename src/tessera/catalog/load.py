"""Loading the catalog: ``catalog/*.yaml`` beside the configuration, and the ``catalog:`` section.

:func:`include_files` runs before the configuration is validated: it reads
the catalog files and appends their event types (with the file's ``domain``
and ``source`` as defaults) to the ``catalog.events`` of the raw document, so
every error names its file. :func:`merge_into` runs when the configuration is
validated: it checks the schemas and their evolution, and turns the catalog's
identity paths and trait mappings into the configuration's identifier paths
and trait mappings, which is what ingest and the profiles processor read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from tessera.catalog.model import CatalogFile, EventType
from tessera.catalog.schemas import check_schema, compatibility_problems

if TYPE_CHECKING:
    from tessera.config import TesseraConfig

DEFAULT_DIR = "catalog"


def include_files(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``raw`` with the event types of the catalog files added to ``catalog.events``.

    Without a ``catalog:`` section, ``catalog/*.yaml`` files beside the
    configuration file are read with the default settings.
    """
    from tessera.config import ConfigError

    section = raw.get("catalog")
    if section is None:
        if not any((base_dir / DEFAULT_DIR).glob("*.yaml")):
            return raw
        section = {}
    if not isinstance(section, dict):
        return raw  # the configuration's validation names the error
    patterns = section.get("files", [f"{DEFAULT_DIR}/*.yaml"])
    if not isinstance(patterns, list):
        return raw
    events = list(section.get("events") or [])
    for pattern in patterns:
        for file in sorted(base_dir.glob(str(pattern))):
            events.extend(_read_file(file, ConfigError))
    return {**raw, "catalog": {**section, "files": [], "events": events}}


def _read_file(file: Path, error: type[Exception]) -> list[dict[str, Any]]:
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{file}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{file}: not valid YAML: {exc}") from None
    try:
        parsed = CatalogFile.model_validate(doc or {})
    except ValidationError as exc:
        lines = [f"{file}: invalid catalog file"]
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            reason = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {where}: {reason}")
        raise error("\n".join(lines)) from None
    out = []
    for event in parsed.events:
        body = event.model_dump(by_alias=True, exclude_unset=True, mode="json")
        body.setdefault("domain", parsed.domain)
        body.setdefault("source", parsed.source)
        out.append({k: v for k, v in body.items() if v is not None})
    return out


def catalog_problems(events: list[EventType]) -> list[str]:
    """Everything wrong with a list of event types: duplicates, bad schemas, breaking versions."""
    problems: list[str] = []
    seen: set[str] = set()
    for event in events:
        if event.type in seen:
            problems.append(f"{event.type}: declared twice")
        seen.add(event.type)
        previous = None
        for version in event.versions:
            bad = check_schema(version.schema_)
            if bad:
                problems.append(f"{event.type} v{version.version}: {bad}")
            elif previous is not None:
                for reason in compatibility_problems(previous.schema_, version.schema_):
                    problems.append(
                        f"{event.type} v{version.version} is incompatible with "
                        f"v{previous.version}: {reason}"
                    )
            previous = version
    return problems


def evolution_problems(old: list[EventType], new: list[EventType]) -> list[str]:
    """What a change from catalog ``old`` to ``new`` breaks: a published version edited in
    a breaking way, a version removed, or an event type removed."""
    problems: list[str] = []
    new_by_type = {e.type: e for e in new}
    for before in old:
        after = new_by_type.get(before.type)
        if after is None:
            problems.append(f"{before.type}: event type removed")
            continue
        versions = {v.version: v for v in after.versions}
        for version in before.versions:
            now = versions.get(version.version)
            if now is None:
                problems.append(f"{before.type} v{version.version}: version removed")
                continue
            for reason in compatibility_problems(version.schema_, now.schema_):
                problems.append(f"{before.type} v{version.version} was changed: {reason}")
        if before.versions and after.versions and after.versions[-1].version > \
                before.versions[-1].version:
            for reason in compatibility_problems(before.versions[-1].schema_,
                                                 after.versions[-1].schema_):
                problems.append(f"{before.type} v{after.versions[-1].version} is incompatible "
                                f"with v{before.versions[-1].version}: {reason}")
    return sorted(set(problems), key=problems.index)


def merge_into(config: TesseraConfig) -> None:
    """Check the catalog of ``config`` and merge its identity paths and trait mappings.

    Raises ValueError (reported as a configuration error) on any problem.
    The configuration is frozen; this runs inside its validation, before
    anything else has seen it, so setting the two fields is safe.
    """
    from tessera.config import IdentityConfig, TraitMapping, TraitsConfig

    catalog = config.catalog
    if catalog is None:
        return
    problems = catalog_problems(catalog.events)
    if problems:
        raise ValueError("event catalog:\n    " + "\n    ".join(problems))
    extra_paths: dict[str, list[str]] = {}
    mappings = list(config.traits.mappings)
    for event in catalog.events:
        for type_, paths in event.identity.items():
            if config.identifier(type_) is None:
                raise ValueError(f"event catalog: {event.type} names the identifier type "
                                 f"{type_!r}, which is not declared under identity.identifiers")
            bucket = extra_paths.setdefault(type_, [])
            bucket += [p for p in paths if p not in bucket]
        for trait, path in event.traits.items():
            mappings.append(TraitMapping(event=event.type, path=path, trait=trait))
    if extra_paths:
        configured = {i.type for i in config.identity.identifiers}
        identifiers = []
        for ident in config.all_identifiers():
            add = [p for p in extra_paths.get(ident.type, []) if p not in ident.paths]
            if add:
                ident = ident.model_copy(update={"paths": [*ident.paths, *add]})
            if add or ident.type in configured:
                identifiers.append(ident)
        identity = IdentityConfig.model_validate(
            {**config.identity.model_dump(), "identifiers": [i.model_dump() for i in identifiers]}
        )
        object.__setattr__(config, "identity", identity)
    if len(mappings) != len(config.traits.mappings):
        traits = TraitsConfig.model_validate(
            {**config.traits.model_dump(), "mappings": [m.model_dump() for m in mappings]}
        )
        object.__setattr__(config, "traits", traits)
