"""The member-services demo: the simulation's properties, and a small run through a real server."""

from __future__ import annotations

import io
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tessera.config import default_config
from tessera.demo.run import EXIT_SERVER_FAILED, DemoResult, run_demo_result
from tessera.demo.scenario import batches, build_scenario
from tessera.identity.extract import IdentifierExtractor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=140, color_system=None), out


# -- the simulation -----------------------------------------------------------


def test_same_seed_same_stream() -> None:
    a = build_scenario(people=120, events=900, seed=3)
    b = build_scenario(people=120, events=900, seed=3)
    c = build_scenario(people=120, events=900, seed=4)
    assert [m.body for m in a.messages] == [m.body for m in b.messages]
    assert [m.body for m in a.messages] != [m.body for m in c.messages]


def test_size_and_messiness() -> None:
    s = build_scenario(people=500, events=5_000, seed=7)
    assert abs(len(s.messages) - 5_000) <= 50
    assert {m.source for m in s.messages} == {
        "web", "app", "membership", "roadservice", "travel", "crm", "contact_center", "store",
    }  # fmt: skip
    types = Counter(m.type for m in s.messages)
    for expected in (
        "identify",
        "page",
        "cart_updated",
        "checkout_completed",
        "com.example.membership.member.created",
        "com.example.membership.member.address_changed",
        "com.example.roadservice.ticket.status_changed",
        "com.example.travel.booking.created",
        "com.example.crm.contact.updated",
        "com.example.contact_center.call.completed",
        "com.example.store.visit.recorded",
    ):
        assert types[expected] > 0, expected
    assert s.duplicates > 0 and s.late > 0 and s.late_address
    assert s.families and s.placeholders
    # e-mails and phones come in several spellings
    assert max(len(v) for (t, _), v in s.spellings.items() if t == "email") >= 3
    assert max(len(v) for (t, _), v in s.spellings.items() if t == "phone") >= 3
    # a duplicate is the very same message, sent after the first one
    first_sent: dict[str, int] = {}
    for position, m in enumerate(s.messages):
        if m.duplicate:
            assert first_sent[m.event_id] < position
        else:
            first_sent[m.event_id] = position


def test_ground_truth_is_consistent() -> None:
    s = build_scenario(people=400, events=4_000, seed=11)
    # only family e-mails are shared, and every record with one also names the member
    for (type_, _), holders in s.shared.items():
        assert type_ == "email"
        assert tuple(sorted(holders)) in s.families
    assert s.ambiguous == 0
    for m in s.messages:
        if any(i in s.shared for i in m.idents):
            assert any(t == "member_number" for t, _ in m.idents), m.body
    assert len(s.people) <= s.expected_profiles < len(s.people) * 1.1
    # the canonical values are what Tessera's normalization makes of every spelling
    extractor = IdentifierExtractor(default_config())
    for (type_, canonical), raws in s.spellings.items():
        for raw in raws:
            assert extractor.normalize(type_, raw) == canonical, (type_, raw)
    for type_, raw in s.placeholders:
        assert extractor.normalize(type_, raw) is None, (type_, raw)


def test_batches() -> None:
    s = build_scenario(people=200, events=2_000, seed=5)
    out = batches(s.messages, size=100)
    assert sum(len(b) for _, _, b in out) == len(s.messages)
    for source, protocol, batch in out:
        assert 0 < len(batch) <= 100
        assert {m.source for m in batch} == {source}
        assert {m.protocol for m in batch} == {protocol}
        assert len({m.event_id for m in batch}) == len(batch)
    # each source's messages keep their order
    for source in {m.source for m in s.messages}:
        sent = [m.seq for _, _, b in out for m in b if m.source == source]
        assert sent == [m.seq for m in s.messages if m.source == source]


# -- a small run through a real server ------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str, Path]:
    data = tmp_path_factory.mktemp("demo")
    console, out = quiet()
    result = run_demo_result(
        people=150, events=1_500, data=data, port=free_port(), seed=7, console=console
    )
    return result, out.getvalue(), data


@pytest.mark.slow
def test_small_run_succeeds(small_run: tuple[DemoResult, str, Path]) -> None:
    result, output, _ = small_run
    assert result.exit_code == 0, output
    assert result.failure is None
    assert "0 wrong merges" in output


@pytest.mark.slow
def test_every_event_is_accepted_once_and_applied(
    small_run: tuple[DemoResult, str, Path],
) -> None:
    result, _, _ = small_run
    assert result.events_sent == 1_500
    assert result.rejected == 0, result.rejections
    assert result.duplicates == result.duplicates_sent > 0
    assert result.accepted + result.duplicates == result.events_sent
    assert result.events_applied == result.accepted
    assert result.ingest_rate > 0


@pytest.mark.slow
def test_the_three_activation_scenarios_deliver_what_the_simulation_implies(
    small_run: tuple[DemoResult, str, Path],
) -> None:
    result, output, _ = small_run
    report = result.activation
    assert report is not None and report.settled
    assert report.problems == []
    assert report.unsigned == 0 and report.webhooks > 0
    # roadside: every driver assignment told its member, with the ticket's ETA
    assert report.notified == report.tickets > 0
    assert report.eta_wrong == [] and report.contact_wrong == []
    assert "Your driver arrives in" in output
    # membership sync: address changes arrive as exactly that field
    assert report.address_synced > 0 and report.sync_extra_fields == []
    # abandoned cart: reminders only for carts nobody checked out
    assert report.carts > report.carts_checked_out > 0
    assert report.reminders > 0 and report.wrong_reminders == []
    assert report.journey["abandoned-cart"]["exited"] > 0


@pytest.mark.slow
def test_profiles_match_the_ground_truth(small_run: tuple[DemoResult, str, Path]) -> None:
    result, _, _ = small_run
    assert result.people == 150
    assert result.profiles == result.expected_profiles == result.profiles_checked
    assert result.people <= result.profiles
    assert result.merges > 0
    assert result.wrong_merges == []
    assert result.unexpected_splits == []
    assert result.missing_identifiers == []
    assert result.unknown_identities == []
    assert result.orphan_profiles == 0
    # and every event sits in its own person's profile
    assert result.events_in_profiles == result.events_expected_in_profiles > 0
    assert result.misattributed_events == []


@pytest.mark.slow
def test_family_members_sharing_an_email_stay_apart(
    small_run: tuple[DemoResult, str, Path],
) -> None:
    result, _, _ = small_run
    assert result.families > 0
    assert result.families_merged == []


@pytest.mark.slow
def test_placeholders_never_become_identities(small_run: tuple[DemoResult, str, Path]) -> None:
    result, _, _ = small_run
    assert result.placeholders
    assert result.placeholders_linked == []


@pytest.mark.slow
def test_late_events_do_not_overwrite_newer_values(
    small_run: tuple[DemoResult, str, Path],
) -> None:
    result, _, _ = small_run
    assert result.late_events > 0
    assert result.addresses_checked > 0
    assert result.addresses_wrong == []


@pytest.mark.slow
def test_customer_360_and_curl(small_run: tuple[DemoResult, str, Path]) -> None:
    result, output, _ = small_run
    show: dict[str, Any] | None = result.showcase
    assert show is not None
    assert len(show["sources"]) >= 4
    # all of the person's events that carried a usable identifier are in the one profile
    assert show["profile"]["event_count"] == show["events_attributable"] == len(show["events"])
    shown = {e["tesserasource"] for e in show["newest_per_source"]}
    assert len(shown) == len(show["newest_per_source"]) >= 4
    assert shown <= set(show["sources"])
    assert "Customer 360" in output
    assert result.curl and all(result.url in c and "rk_read_123" in c for c in result.curl)
    assert f"/v1/profiles/email:{show['email']}" in output


@pytest.mark.slow
def test_nothing_is_left_running(small_run: tuple[DemoResult, str, Path]) -> None:
    result, _, _ = small_run
    port = int(result.url.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    # neither the server nor its worker (same process group) is left
    assert result.server_pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(result.server_pid, 0)


@pytest.mark.slow
def test_a_second_run_starts_fresh(small_run: tuple[DemoResult, str, Path]) -> None:
    _, _, data = small_run
    console, out = quiet()
    again = run_demo_result(
        people=40, events=300, data=data, port=free_port(), seed=1, console=console
    )
    output = out.getvalue()
    assert again.exit_code == 0, output
    assert "deleting it to start fresh" in output
    assert again.profiles == again.expected_profiles  # nothing of the first run is left


def test_port_in_use_fails_without_starting(tmp_path: Path) -> None:
    console, _ = quiet()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_demo_result(people=20, events=100, data=tmp_path, port=port, console=console)
    assert result.exit_code == EXIT_SERVER_FAILED
    assert "in use" in (result.failure or "")
