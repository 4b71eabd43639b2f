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
