"""Schema evolution: what a new version may change, checked when the catalog is loaded."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.catalog.load import evolution_problems
from tessera.catalog.model import EventType
from tessera.catalog.schemas import compatibility_problems
from tessera.config import ConfigError, load_config
from tests.catalog.conftest import MEMBER_V1, catalog_section, make_config

BASE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "city"],
    "properties": {"id": {"type": "string"}, "city": {"type": "string"},
                   "age": {"type": "integer"},
                   "address": {"type": "object", "required": ["street"],
                               "properties": {"street": {"type": "string"}}}},
}


def changed(**edits: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    for path, value in edits.items():
        node = new
        parts = path.split("__")
        for part in parts[:-1]:
            node = node[part]
        if value is None:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return new


def test_adding_an_optional_field_passes() -> None:
    new = changed(properties__nickname={"type": "string"})
    assert compatibility_problems(BASE, new) == []


def test_nested_optional_field_and_wider_limits_pass() -> None:
    new = changed(properties__address__properties__floor={"type": "integer"})
    assert compatibility_problems(BASE, new) == []


def test_removing_a_required_field_is_refused_with_the_reason() -> None:
    new = changed(required=["id"], properties__city=None)
    problems = compatibility_problems(BASE, new)
    assert problems == ["/city: required field removed (consumers of the previous version "
                        "rely on it)"]


def test_changing_a_type_is_refused_with_the_reason() -> None:
    problems = compatibility_problems(BASE, changed(properties__age={"type": "string"}))
    assert problems == ["/age: type changed from integer to string"]


def test_nested_type_change_names_the_nested_path() -> None:
    new = changed(properties__address__properties__street={"type": "integer"})
    assert compatibility_problems(BASE, new) == [
        "/address/street: type changed from string to integer"]


def test_adding_a_required_field_is_refused() -> None:
    new = changed(required=["id", "city", "age"])
    assert compatibility_problems(BASE, new) == [
        "/age: optional field made required (events of the previous version may lack it)"]
    new = changed(required=["id", "city", "zip"], properties__zip={"type": "string"})
    assert "/zip: required field added" in compatibility_problems(BASE, new)[0]


def test_removed_enum_values_and_tightened_limits_are_refused() -> None:
    old = {"type": "string", "enum": ["a", "b"], "maxLength": 10}
    assert compatibility_problems(old, {"type": "string", "enum": ["a", "b", "c"],
                                        "maxLength": 20}) == []
    problems = compatibility_problems(old, {"type": "string", "enum": ["a"], "maxLength": 5})
    assert problems == ["(top level): enum values removed: ['b']",
                        "(top level): maxLength tightened to 5"]


def _with_v2(schema: dict[str, Any]) -> dict[str, Any]:
    section = catalog_section()
    section["events"][0]["versions"].append({"version": 2, "schema": schema})
    return section


def test_a_breaking_version_is_refused_when_the_catalog_is_loaded() -> None:
    v2 = copy.deepcopy(MEMBER_V1)
    v2["properties"]["after"]["properties"]["postcode"] = {"type": "integer"}
    with pytest.raises(ConfigError) as exc:
        make_config(_with_v2(v2))
    assert ("com.example.membership.member.address_changed v2 is incompatible with v1: "
            "/after/postcode: type changed from string to integer") in str(exc.value)


def test_a_compatible_version_is_registered() -> None:
    v2 = copy.deepcopy(MEMBER_V1)
    v2["properties"]["after"]["properties"]["country"] = {"type": "string"}
    config = make_config(_with_v2(v2))
    assert config.catalog is not None
    assert [v.version for v in config.catalog.events[0].versions] == [1, 2]


def test_an_invalid_json_schema_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        make_config(_with_v2({"type": "objekt"}))


def test_editing_a_published_version_is_caught_against_the_previous_catalog() -> None:
    old = [EventType.model_validate(e) for e in catalog_section()["events"]]
    edited = copy.deepcopy(catalog_section()["events"])
    edited[0]["versions"][0]["schema"]["properties"]["after"]["required"] = ["member_number"]
    new = [EventType.model_validate(e) for e in edited]
    assert evolution_problems(old, new) == [
        "com.example.membership.member.address_changed v1 was changed: /after/city: no longer "
        "required (consumers of the previous version rely on it)"]
    assert evolution_problems(old, new[1:])[0].endswith("event type removed")


def test_catalog_files_beside_the_config(tmp_path: Path) -> None:
    section = catalog_section()
    (tmp_path / "catalog").mkdir()
    events = section.pop("events")
    for event in events:
        event.pop("domain")
    (tmp_path / "catalog" / "membership.yaml").write_text(
        yaml.safe_dump({"domain": "membership", "events": events[:1]}))
    (tmp_path / "catalog" / "other.yaml").write_text(
        yaml.safe_dump({"domain": "other", "events": events[1:]}))
    config_file = tmp_path / "tessera.yaml"
    config_file.write_text(yaml.safe_dump({
        "sources": [{"name": "membership", "write_key": "wk_membership_123"}],
        "identity": {"identifiers": [{"type": "member_number", "limit": 1}]},
    }))
    config = load_config(config_file)
    assert config.catalog is not None
    types = {e.type: e for e in config.catalog.events}
    assert types["com.example.membership.member.address_changed"].domain == "membership"
    assert types["Order Completed"].domain == "other"
    # the catalog's identity paths and trait mappings reach the configuration
    member = config.identifier("member_number")
    assert member is not None and "data.after.member_number" in member.paths
    assert ("com.example.membership.member.address_changed", "data.after.city", "city") in {
        (m.event, m.path, m.trait) for m in config.traits.mappings}


def test_a_bad_catalog_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "bad.yaml").write_text(
        "events:\n  - type: x\n    kind: entity_change\n")
    (tmp_path / "tessera.yaml").write_text("sources: []\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "tessera.yaml")
    assert "bad.yaml" in str(exc.value) and "needs 'entity'" in str(exc.value)


def test_unknown_identifier_type_in_the_catalog_is_refused() -> None:
    section = catalog_section()
    section["events"][0]["identity"] = {"loyalty_id": ["data.after.loyalty"]}
    with pytest.raises(ConfigError, match="loyalty_id"):
        make_config(section)


def test_no_catalog_changes_nothing() -> None:
    from tessera.config import default_config

    assert default_config().catalog is None
