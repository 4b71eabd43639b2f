"""``tessera traits`` and ``tessera segments`` on a data directory the processors filled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from tessera.cli import app as cli_app
from tessera.config import default_config
from tests.personalization.helpers import harness


async def test_show_list_members_evaluate_and_rebuild(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with harness(default_config(), data) as h:
        events = [h.event({"member_number": "M-1", "consent": {"email": True}},
                          "com.example.crm.contact.updated", source="crm")]
        events += [h.event({"member_number": "M-1", "resolution": "towed"},
                           "com.example.roadservice.ticket.status_changed", source="roadservice")
                   for _ in range(2)]
        await h.send(*events)
        await h.process()
        pid = h.pid("member_number:M-1")
        before = h.reads.computed_of(pid)
        h.service.state.reset()  # as if the state were lost
    runner = CliRunner()
    where = ["--data-dir", str(data)]

    async def run(*args: str) -> Any:  # the commands run their own event loop
        return await asyncio.to_thread(runner.invoke, cli_app, [*args, *where])

    show = await run("traits", "show", "member_number:M-1")
    assert show.exit_code == 0, show.output
    assert orjson.loads(show.output)["segments"] == []  # lost

    rebuilt = await run("traits", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt 1 profile(s)" in rebuilt.output and "3 entered" in rebuilt.output
    body = orjson.loads(runner.invoke(cli_app, ["traits", "show", "member_number:M-1",
                                                *where]).output)
    assert body["computed_traits"] == before
    assert [s["segment"] for s in body["segments"]] == ["members", "frequent_tows",
                                                        "marketing_email_consent"]

    listed = await run("segments", "list")
    assert listed.exit_code == 0 and "frequent_tows" in listed.output
    members = await run("segments", "members", "frequent_tows")
    assert members.output.split() == [pid]
    again = await run("segments", "evaluate")
    assert again.exit_code == 0 and "0 entered, 0 exited" in again.output
    unknown = await run("segments", "members", "nope")
    assert unknown.exit_code == 1
    missing = await run("traits", "show", "member_number:nobody")
    assert missing.exit_code == 1


def test_config_check_counts_the_personalization_section() -> None:
    result = CliRunner().invoke(cli_app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "personalization: 7 computed traits, 5 audiences, 2 actions" in result.output


async def test_audiences_list_save_and_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with harness(default_config(), data) as h:
        await h.send(h.event({"member_number": "M-1", "resolution": "towed"},
                             "com.example.roadservice.ticket.status_changed",
                             source="roadservice"))
        await h.process()
        pid = h.pid("member_number:M-1")
    runner = CliRunner()
    where = ["--data-dir", str(data)]

    async def run(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, cli_app, [*args, *where])

    rule = tmp_path / "rule.yaml"
    rule.write_text("all:\n  - {audience: members}\n  - {path: computed.roadside_tows_12m, "
                    "gte: 1}\n")
    saved = await run("audiences", "save", "towed_once", "--rule", f"@{rule}",
                      "--description", "At least one tow")
    assert saved.exit_code == 0, saved.output
    assert "created audience 'towed_once'" in saved.output
    listed = orjson.loads((await run("audiences", "list", "--json")).output)
    found = {a["name"]: a for a in listed}
    assert found["towed_once"]["origin"] == "api" and found["members"]["origin"] == "config"
    assert found["towed_once"]["evaluated"] is False
    assert found["towed_once"]["description"] == "At least one tow"

    # the processor fills it in; the commands see the members
    async with harness(default_config(), data) as h:
        await h.process()
    members = await run("segments", "members", "towed_once")
    assert members.exit_code == 0 and members.output.split() == [pid]
    table = await run("audiences", "list")
    assert "towed_once" in table.output and "api" in table.output

    bad = await run("audiences", "save", "broken", "--rule", '{"audience": "nope"}')
    assert bad.exit_code == 1 and "rule.audience: no audience named 'nope'" in bad.output
    configured = await run("audiences", "delete", "members")
    assert configured.exit_code == 1 and "configuration file" in configured.output
    deleted = await run("audiences", "delete", "towed_once")
    assert deleted.exit_code == 0, deleted.output
    assert (await run("audiences", "delete", "towed_once")).exit_code == 1
    async with harness(default_config(), data) as h:
        await h.process()
        assert set(h.service.state.memberships_of(pid)) == {"members"}  # left towed_once
