"""Configuration validation: a mistake names the file, the dotted path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.config import ConfigError, default_config, load_config, parse_config

runner = CliRunner()


def flat(text: str) -> str:
    """Whitespace collapsed, so that a console's line wrapping does not matter."""
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        ({"sources": [{"name": "web", "write_key": "wk_web_123", "colour": 1}]},
         "sources.0.colour", "unknown field"),
        ({"srcs": []}, "srcs", "unknown field"),
        ({"processor": {"batch_size": "lots"}}, "processor.batch_size",
         "Input should be a valid integer"),
        ({"identity": {"identifiers": [{"type": "member", "limit": -1}]}},
         "identity.identifiers.0.limit", "greater than or equal to 0"),
        ({"identity": {"identifiers": [{"type": "m", "normalize": "upper"}]}},
         "identity.identifiers.0.normalize", "Input should be 'none', 'lower', 'email' or 'phone'"),
        ({"api_keys": [{"key": "rk_read_123", "scopes": ["profiles:write"]}]},
         "api_keys.0.scopes", "unknown scope 'profiles:write'"),
        ({"sources": [{"name": "web", "write_key": "short"}]}, "sources.0.write_key",
         "at least 8 characters"),
        ({"sources": "web"}, "sources", "Input should be a valid list"),
        # wrong types are refused, not coerced
        ({"sources": [{"name": "web", "write_key": "wk_web_123", "priority": True}]},
         "sources.0.priority", "Input should be a valid integer"),
        ({"processor": {"max_attempts": "5"}}, "processor.max_attempts",
         "Input should be a valid integer"),
        ({"identity": {"blocked_patterns": ["(unclosed"]}}, "identity.blocked_patterns",
         "'(unclosed' is not a regular expression"),
        ({"sources": [{"name": "a", "write_key": "wk_same_1"},
                      {"name": "b", "write_key": "wk_same_1"}]},
         "(top level)", "write key of source 'b' is used twice"),
    ],
)  # fmt: skip
def test_parse_config_names_origin_path_and_reason(raw: object, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, "tessera.yaml")
    message = str(raised.value)
    assert message.startswith("tessera.yaml: invalid configuration")
    assert f"  {path}: " in message
    line = next(ln for ln in message.splitlines() if ln.startswith(f"  {path}: "))
    assert reason in line


def test_parse_config_lists_every_mistake() -> None:
    raw = {"sources": [{"name": "web", "write_key": "wk_web_123", "x": 1}], "processor": {"y": 2}}
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, "t.yaml")
    assert "sources.0.x: unknown field" in str(raised.value)
    assert "processor.y: unknown field" in str(raised.value)


def test_parse_config_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^t\.yaml: the top level must be a mapping, got list"):
        parse_config([1, 2], "t.yaml")


def test_parse_config_accepts_an_empty_document() -> None:
    assert parse_config(None).sources == []


def test_load_config_reports_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {name: web, write_key: wk_web_123, priority: high}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(bad)
    message = str(raised.value)
    assert message.startswith(f"{bad}: invalid configuration")
    assert "sources.0.priority: Input should be a valid integer" in message


def test_load_config_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("sources:\n  - {name: only, write_key: wk_only_123}\n")
    monkeypatch.setenv("TESSERA_CONFIG", str(good))
    assert [s.name for s in load_config().sources] == ["only"]
    monkeypatch.delenv("TESSERA_CONFIG")
    assert load_config() == default_config()


def test_cli_config_check_exits_2_with_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(
        "sources:\n  - {name: web, write_key: wk_web_123, colour: blue}\n"
        "processor:\n  batch_size: lots\n"
    )
    result = runner.invoke(app, ["config", "check", "--config", "bad.yaml"])
    assert result.exit_code == 2
    output = flat(result.stderr)
    assert "error: bad.yaml: invalid configuration" in output
    assert "sources.0.colour: unknown field" in output
    assert "processor.batch_size: Input should be a valid integer" in output


def test_cli_config_check_missing_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "check", "--config", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml: cannot read" in flat(result.stderr)


def test_cli_config_check_accepts_a_good_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text("sources:\n  - {name: web, write_key: wk_web_123}\n")
    result = runner.invoke(app, ["config", "check", "--config", "good.yaml"])
    assert result.exit_code == 0, result.output
    assert "ok good.yaml" in flat(result.stdout)
    assert "sources: web" in flat(result.stdout)


def test_trait_rules_must_name_declared_sources() -> None:
    raw = {"sources": [{"name": "crm", "write_key": "wk_crm_1234"}],
           "traits": {"rules": [{"trait": "address", "sources": ["crn"]}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "t.yaml")
    assert "names the source 'crn', which is not declared" in str(info.value)
    with pytest.raises(ConfigError, match="source_priority names the source 'web'"):
        parse_config({"sources": raw["sources"], "traits": {"source_priority": ["web"]}})
