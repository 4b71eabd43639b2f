"""The console in a real browser: headless Chromium driven by Playwright.

A real ``tessera serve`` (API and worker processes) on a free port holds the
scenario of ``scenario.py``: Jane's two profiles merged by an app login, and
two dead letters. The tests log in, find Jane, open her Customer 360, see the
merge in the identity graph and why it happened, watch the live tail, and
replay a dead letter.

A second server runs the configuration of ``sections.py`` (a webhook
subscription whose receiver fails, a journey, a catalog type with a schema, a
review candidate): the tests pause and resume the subscription, replay its
dead letters once the receiver works, read the journey's counts per step,
browse the catalog type and its quarantined event, and accept the candidate.

Screenshots go to a temporary directory; with ``TESSERA_UPDATE_SCREENSHOTS=1``
they replace the ones in ``docs/screenshots/`` that the README shows.

Chromium is Debian's (``/usr/bin/chromium``): the tests skip without it,
unless ``TESSERA_REQUIRE_SERVICES`` is set (CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.activation.receiver import Receiver
from tests.console.scenario import (
    EVENTS,
    FAILED_EVENT,
    MERGE_EVENT_TYPE,
    cloudevent,
    put_dead_letters_in,
)
from tests.console.sections import (
    CRM_EVENTS,
    EXTRA_EVENTS,
    HOOK,
    JOURNEY,
    ORDER_TYPE,
    QUARANTINED_ID,
    REVIEW_SCORE,
    queue_review_pair,
    raw_config,
)
from tests.processes import TesseraProcess, free_port

CHROMIUM = Path(os.environ.get("TESSERA_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
ADMIN_KEY = "ak_admin_123"
READ_KEY = "rk_read_123"
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.slow


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("TESSERA_REQUIRE_SERVICES"):
        pytest.fail(message + " and TESSERA_REQUIRE_SERVICES is set")
    pytest.skip(message)


def _post(url: str, key: str, event: dict[str, Any]) -> None:
    response = httpx.post(
        url + "/v1/events", json=cloudevent(event), timeout=10,
        headers={"Authorization": f"Bearer {key}",
                 "Content-Type": "application/cloudevents+json"})
    assert response.status_code == 202, response.text


def _wait_processed(url: str, events: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = httpx.get(url + "/v1/stats", headers={"Authorization": f"Bearer {READ_KEY}"},
                          timeout=5).json()
        if stats["store"]["events_applied"] >= events and stats["lag"]["profiles"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker did not catch up: {stats}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TesseraProcess]:
    _require_chromium()
    data = tmp_path_factory.mktemp("console") / "data"
    # in a thread of its own: Playwright's sync API may already run a loop in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, put_dead_letters_in(data)).result()
    process = TesseraProcess(["serve"], data, port=free_port(),
                             env={"TESSERA_SQLITE_SYNCHRONOUS": "OFF"})
    process.start()
    try:
        for key, event in EVENTS:
            _post(process.url, key, event)
        _wait_processed(process.url, len(EVENTS))
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("TESSERA_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


def _login(page: Any, server: TesseraProcess, key: str = ADMIN_KEY) -> None:
    page.goto(server.url + "/console")
    assert "/console/login" in page.url
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


def test_login_only_with_an_admin_key(page: Any, server: TesseraProcess, shots: Path) -> None:
    _login(page, server, "not-a-key")
    assert page.locator("p.error").inner_text() == "That is not an API key with the admin scope."
    page.screenshot(path=str(shots / "login.png"))
    page.fill("input[name=key]", READ_KEY)
    page.click("button[type=submit]")
    assert page.locator("p.error").is_visible()

    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/console")
    assert page.locator("h1").first.inner_text() == "Overview"
    assert page.locator("[data-lag=profiles]").inner_text() == "0"
    # both dead letters of the scenario, once for every consumer group that failed them
    count = int(page.locator("[data-stat=dead-letters]").inner_text())
    assert count >= 2
    page.click("[data-stat=dead-letters] a")
    page.wait_for_url(server.url + "/console/dead-letters")
    assert page.locator("tr.dead-letter").count() == count


def test_overview_tails_events_live(page: Any, server: TesseraProcess, shots: Path) -> None:
    _login(page, server)
    page.wait_for_url(server.url + "/console")
    page.wait_for_function(
        "document.getElementById('tail-state').textContent === 'live'", timeout=TIMEOUT_MS)
    for i in range(3):
        _post(server.url, "wk_web_123", {
            "id": f"tail-{i}", "source": "web", "type": "com.example.web.page_viewed",
            "time": f"2026-03-06T08:0{i}:00Z", "data": {"userId": f"u-tail-{i}"}})
    rows = page.locator("#tail tbody tr[data-uid]")
    # other rows may already be there: wait for the last event itself
    rows.filter(has_text="tail-2").wait_for(timeout=TIMEOUT_MS)
    assert "com.example.web.page_viewed" in rows.first.inner_text()
    assert "user_id:u-tail-2" in rows.first.inner_text()
    # the stats refresh by themselves and count what was just ingested
    page.wait_for_function(
        "document.querySelector('[data-stat=ingest-rate]').textContent.trim() !== '—'",
        timeout=TIMEOUT_MS)
    page.screenshot(path=str(shots / "overview.png"), full_page=True)


def test_find_a_customer_and_see_why_they_were_merged(
    page: Any, server: TesseraProcess, shots: Path
) -> None:
    _login(page, server)
    page.wait_for_url(server.url + "/console")
    search = page.locator("header form.search input[name=q]")
    # the personalization processor (a process of its own) has put Jane in her segments
    _wait("Jane's segments", lambda: any(
        s["segment"] == "members" for s in _admin(
            server.url, "/v1/profiles/member_number:M-1001/segments")["segments"]))
    search.fill("Jane@Example.com")
    search.press("Enter")
    page.wait_for_url(re.compile(r".*/console/profiles/prf_[0-9a-f]+$"))
    assert page.locator("h1").first.inner_text().startswith("Jane Doe")

    traits = page.locator("#traits").inner_text()
    assert "membership_tier" in traits and "gold" in traits and "membership" in traits

    graph = page.locator("svg.identity-graph")
    assert graph.is_visible()
    merged = graph.locator("g.merge")
    assert merged.count() == 1
    assert (merged.first.locator("text").first.text_content() or "").startswith("prf_")
    assert "from app" in (merged.first.text_content() or "")
    carried = graph.locator("g.in-merge-event")
    assert sorted(carried.nth(i).get_attribute("data-identifier")
                  for i in range(carried.count())) == ["member_number:M-1001", "user_id:u-42"]
    assert graph.locator("g.link").count() == 4

    why = page.locator("li.merge-reason").inner_text()
    assert MERGE_EVENT_TYPE in why and "member_number:M-1001" in why and "user_id:u-42" in why
    timeline = page.locator("#timeline tbody tr")
    assert timeline.count() == 4
    assert "com.example.membership.renewed" in timeline.first.inner_text()
    assert page.locator("#segments [data-segment=members]").is_visible()
    assert page.locator("#next-best-actions tr[data-channel=email]").is_visible()
    assert "no decision" in page.locator(
        "#consent tr[data-purpose=marketing_email]").inner_text()
    page.locator("#identity").screenshot(path=str(shots / "identity-graph.png"))
    page.screenshot(path=str(shots / "customer-360.png"), full_page=True)

    # the event behind the merge, one click away
    page.locator("li.merge-reason a").first.click()
    page.wait_for_url(re.compile(r".*/events/[0-9a-f]+$"))
    assert "merges it caused" in page.locator("table.kv").inner_text()


def test_replay_a_dead_letter(page: Any, server: TesseraProcess, shots: Path) -> None:
    _login(page, server)
    page.wait_for_url(server.url + "/console")
    page.click("header nav >> text=Dead letters")
    page.wait_for_url(server.url + "/console/dead-letters")
    row = page.locator(f"tr.dead-letter:has-text('{FAILED_EVENT.uid[:24]}')")
    assert "simulated: the store was unavailable" in row.inner_text()
    # the undecodable message: once per consumer group reading the events topic
    assert page.locator("tr.dead-letter:has-text('undecodable event')").count() >= 1
    page.screenshot(path=str(shots / "dead-letters.png"), full_page=True)

    row.locator("button.replay").click()
    row.locator("span.ok").wait_for()
    assert row.locator("button.replay").count() == 0

    # the worker applies the replayed event: Carol now has a profile
    deadline = time.monotonic() + 20
    found = None
    while time.monotonic() < deadline:
        found = httpx.get(server.url + "/v1/profiles/email:carol@example.com", timeout=5,
                          headers={"Authorization": f"Bearer {READ_KEY}"})
        if found.status_code == 200:
            break
        time.sleep(0.2)
    assert found is not None and found.status_code == 200, found.text if found else None
    assert found.json()["traits"]["first_name"]["value"] == "Carol"
    page.reload()
    assert page.locator(f"tr.dead-letter:has-text('{FAILED_EVENT.uid[:24]}')").count() == 0


# -- subscriptions, journeys, catalog, identity review ----------------------------


class Hook:
    """The webhook receiver of ``crm-hook``: answers 503 until ``working`` is set."""

    def __init__(self) -> None:
        self.working = False
        self.receiver = Receiver(lambda r: 200 if self.working else 503)


def _admin(url: str, path: str) -> Any:
    response = httpx.get(url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    out = Hook()
    with out.receiver:
        yield out


@pytest.fixture(scope="module")
def sections_server(tmp_path_factory: pytest.TempPathFactory, hook: Hook
                    ) -> Iterator[TesseraProcess]:
    _require_chromium()
    root = tmp_path_factory.mktemp("console-sections")
    config = root / "tessera.yaml"
    config.write_text(json.dumps(raw_config(hook.receiver.url)))  # JSON is YAML
    process = TesseraProcess(["serve", "--config", str(config)], root / "data",
                             port=free_port(), env={"TESSERA_SQLITE_SYNCHRONOUS": "OFF"})
    process.start()
    try:
        for key, event in [*EVENTS, *EXTRA_EVENTS]:
            _post(process.url, key, event)

        def settled() -> bool:
            sub = _admin(process.url, f"/v1/subscriptions/{HOOK}")
            [journey] = _admin(process.url, "/v1/journeys")["journeys"]
            return bool(sub["stats"]["dead_lettered"] == CRM_EVENTS
                        and journey["steps"]["*"]["completed"] == 1
                        and journey["steps"]["wait_login"]["waiting"] == 1)

        _wait("the CRM deliveries to fail and the journey to run", settled)
        pid = _admin(process.url, "/v1/profiles/member_number:M-2002")["id"]
        other = _admin(process.url, "/v1/profiles/user_id:u-bob")["id"]
        queue_review_pair(process.data_dir, pid, other)
        yield process
    finally:
        process.stop()


@pytest.fixture
def console(page: Any, sections_server: TesseraProcess) -> Any:
    """A logged-in tab on the sections server."""
    _login(page, sections_server)
    page.wait_for_url(sections_server.url + "/console")
    return page


def test_pause_and_resume_a_subscription(console: Any, sections_server: TesseraProcess,
                                         shots: Path) -> None:
    console.click("header nav >> text=Subscriptions")
    console.wait_for_url(sections_server.url + "/console/subscriptions")
    row = console.locator(f"tr[data-subscription='{HOOK}']")
    assert row.locator("[data-field=state]").inner_text() == "delivering"
    assert row.locator("[data-field=pending]").inner_text() == str(CRM_EVENTS)
    assert "HTTP 503" in row.locator("[data-field=last-error]").inner_text()
    console.screenshot(path=str(shots / "subscriptions.png"), full_page=True)

    row.locator("button.pause").click()
    row.locator("[data-field=state]", has_text="paused").wait_for()
    assert _admin(sections_server.url, f"/v1/subscriptions/{HOOK}")["paused"] is True
    console.reload()
    assert row.locator("[data-field=state]").inner_text() == "paused"

    row.locator("button.resume").click()
    row.locator("[data-field=state]", has_text="delivering").wait_for()
    assert _admin(sections_server.url, f"/v1/subscriptions/{HOOK}")["paused"] is False


def test_replay_the_dead_letters_of_a_subscription(
    console: Any, sections_server: TesseraProcess, hook: Hook
) -> None:
    hook.working = True  # the destination is fixed
    console.goto(sections_server.url + "/console/subscriptions")
    row = console.locator(f"tr[data-subscription='{HOOK}']")
    row.locator("button.replay").click()
    row.locator(".message", has_text=f"{CRM_EVENTS} dead letter(s) queued for replay").wait_for()

    def delivered() -> bool:
        stats = _admin(sections_server.url, f"/v1/subscriptions/{HOOK}")["stats"]
        return bool(stats["delivered"] >= CRM_EVENTS and stats["dead_letters_pending"] == 0)

    _wait("the replayed deliveries", delivered)
    # at least once: a replayed letter may be handed out again while still in flight
    assert {r.json["id"] for r in hook.receiver.ok()} == {"crm-1", "crm-2", "crm-3"}
    console.reload()
    assert int(row.locator("[data-field=delivered]").inner_text()) >= CRM_EVENTS
    assert row.locator("[data-field=pending]").inner_text() == "0"
    assert row.locator("button.replay").count() == 0


def test_see_the_counts_of_a_journey(console: Any, sections_server: TesseraProcess,
                                     shots: Path) -> None:
    console.click("header nav >> text=Journeys")
    console.wait_for_url(sections_server.url + "/console/journeys")
    journey = console.locator(f"section[data-journey='{JOURNEY}']")

    def counts(step: str) -> list[str]:
        row = journey.locator(f"tr[data-step='{step}']")
        return [row.locator(f"[data-count={c}]").inner_text()
                for c in ("entered", "waiting", "completed", "exited")]

    assert counts("*") == ["2", "0", "1", "0"]
    assert counts("wait_login") == ["2", "1", "1", "0"]
    assert counts("greet") == ["1", "0", "1", "0"]
    console.screenshot(path=str(shots / "journeys.png"), full_page=True)


def test_browse_a_catalog_type_with_a_violation(console: Any, sections_server: TesseraProcess,
                                                shots: Path) -> None:
    console.click("header nav >> text=Catalog")
    console.wait_for_url(sections_server.url + "/console/catalog")
    row = console.locator(f"tr[data-type='{ORDER_TYPE}']")
    assert row.locator("[data-field=violations]").inner_text() == "1"
    assert "/data/amount: must be of type number" in console.locator("tr.violation").inner_text()
    console.screenshot(path=str(shots / "catalog.png"), full_page=True)

    row.locator("a").first.click()
    console.wait_for_url(re.compile(rf".*/console/catalog/types/{re.escape(ORDER_TYPE)}$"))
    assert console.locator("details.schema-version[data-version='1'] pre").is_visible()
    assert '"amount"' in console.locator("details.schema-version pre").inner_text()
    quarantined = console.locator(f"tr[data-event-id='{QUARANTINED_ID}']")
    assert "/data/amount" in quarantined.locator("ul.problems").inner_text()
    console.screenshot(path=str(shots / "catalog-type.png"), full_page=True)


def test_accept_a_review_candidate(console: Any, sections_server: TesseraProcess,
                                   shots: Path) -> None:
    console.click("header nav >> text=Identity review")
    console.wait_for_url(sections_server.url + "/console/identity-review")
    candidate = console.locator("section.candidate").first
    assert f"{REVIEW_SCORE:.4f}" in candidate.locator(".score").inner_text()
    first = candidate.locator("tr[data-field=first_name]").inner_text()
    assert first.count("Bob") == 2 and "same" in first
    console.screenshot(path=str(shots / "identity-review.png"), full_page=True)

    candidate.locator("button.accept").click()
    decided = console.locator("section.candidate.decided")
    decided.wait_for()
    assert decided.locator(".decision").inner_text() == "merged"
    decided.locator("a", has_text="Open the merged profile").click()
    console.wait_for_url(re.compile(r".*/console/profiles/prf_[0-9a-f]+$"))
    identifiers = console.locator("#identity").inner_text()
    assert "bob@example.com" in identifiers and "bob.smith@home.example" in identifiers
    assert "probabilistic" in console.locator("li.merge-reason").inner_text()
    after = _admin(sections_server.url, "/v1/profiles/user_id:u-bob")["id"]
    assert after == _admin(sections_server.url, "/v1/profiles/member_number:M-2002")["id"]
