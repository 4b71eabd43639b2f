"""The console's Subscriptions, Journeys, Catalog and Identity review pages, in-process.

The ``sections`` fixture runs the profiles worker and the activation
processor for real: a webhook that answers 503 dead-letters the CRM events,
a journey is entered by two sign-ups, an order breaking its schema is
quarantined, and a candidate pair waits for review.
"""

from __future__ import annotations

import re

import pytest

from tessera.identity.review import ReviewStore
from tests.console.conftest import FORM, Sections, wait_until
from tests.console.sections import (
    CRM_EVENTS,
    FILE_SUB,
    HOOK,
    HOOK_DEAD_LETTERS,
    JOURNEY,
    ORDER_TYPE,
    QUARANTINED_ID,
)

PAGES = ("/console/subscriptions", "/console/journeys", "/console/catalog",
         f"/console/catalog/types/{ORDER_TYPE}", "/console/identity-review")
ACTIONS = (f"/console/subscriptions/{HOOK}/pause", f"/console/subscriptions/{HOOK}/resume",
           f"/console/subscriptions/{HOOK}/replay", "/console/identity-review/accept",
           "/console/identity-review/reject")


def _row(html: str, attr: str, value: str) -> str:
    start = html.index(f'{attr}="{value}"')
    return html[start: html.index("</tr>", start)]


def _cell(row: str, name: str) -> str:
    match = re.search(rf'data-(?:field|count)="{name}">(.*?)</td>', row, re.S)
    assert match, (name, row)
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


async def test_new_pages_need_a_login(sections: Sections) -> None:
    for path in PAGES:
        response = await sections.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/console/login?next=%2Fconsole"), path
    for path in ACTIONS:
        response = await sections.client.post(path, content="a=x&b=y")
        assert response.status_code == 303, path
    assert not (await sections.subscription(HOOK))["paused"]


async def test_new_actions_refuse_a_missing_or_wrong_csrf_token(sections: Sections) -> None:
    await sections.login()
    for path in ACTIONS:
        missing = await sections.client.post(path)
        assert missing.status_code == 403, path
        forged = await sections.client.post(path, headers={"X-CSRF-Token": "0" * 64})
        assert forged.status_code == 403, path
    hook = await sections.subscription(HOOK)
    assert not hook["paused"]
    assert hook["stats"]["dead_letters_pending"] == HOOK_DEAD_LETTERS
    review = ReviewStore.in_data_dir(sections.runtime.data_dir)
    assert review.counts()["pending"] == 1
    review.close()


async def test_subscriptions_show_delivery_health(sections: Sections) -> None:
    await sections.login()
    page = await sections.client.get("/console/subscriptions")
    assert page.status_code == 200
    hook = _row(page.text, "data-subscription", HOOK)
    assert _cell(hook, "state") == "delivering"
    assert _cell(hook, "lag") == "0"
    assert _cell(hook, "delivered") == "0"
    assert _cell(hook, "dead-lettered") == str(HOOK_DEAD_LETTERS)
    assert _cell(hook, "pending") == str(HOOK_DEAD_LETTERS)
    assert "HTTP 503: unavailable" in _cell(hook, "last-error")
    assert "webhook http://127.0.0.1:" in hook
    assert f"Replay {HOOK_DEAD_LETTERS} dead letters" in hook
    healthy = _row(page.text, "data-subscription", FILE_SUB)
    assert "file everything.jsonl" in healthy
    assert int(_cell(healthy, "delivered")) > 0
    # the overview's delivery failures are the same figures
    overview = await sections.client.get("/console")
    failures = _row(overview.text, "data-delivery", HOOK)
    assert _cell(failures, "failed") == str(CRM_EVENTS)


async def test_pause_and_resume_a_subscription(sections: Sections) -> None:
    await sections.login()
    csrf = {"X-CSRF-Token": await sections.csrf()}
    paused = await sections.client.post(f"/console/subscriptions/{HOOK}/pause", headers=csrf)
    assert paused.status_code == 200
    assert "<html" not in paused.text
    assert _cell(paused.text, "state") == "paused" and ">Resume</button>" in paused.text
    assert (await sections.subscription(HOOK))["paused"] is True

    async def taken() -> bool:  # the running processor reads pause flags every refresh
        running = sections.activation.running.get(HOOK)
        return running is not None and running.runner.paused

    await wait_until(taken, "the running processor to take the pause")
    # the running processor stops delivering: a new CRM event waits
    await sections.post("wk_crm_123", {
        "id": "crm-paused", "source": "crm", "type": "com.example.crm.contact.updated",
        "data": {"member_number": "M-4004", "first_name": "Fay"}})

    async def waiting() -> bool:
        stats = (await sections.subscription(HOOK))["stats"]
        return stats["lag"] == 1

    await wait_until(waiting, "the paused subscription to hold the event")
    assert not sections.hook.ok()

    resumed = await sections.client.post(f"/console/subscriptions/{HOOK}/resume", headers=csrf)
    assert resumed.status_code == 200
    assert _cell(resumed.text, "state") == "delivering" and ">Pause</button>" in resumed.text

    async def delivered() -> bool:
        return len(sections.hook.ok()) == 1

    await wait_until(delivered, "the resumed subscription to deliver")
    delivery = sections.hook.ok()[0].json
    assert delivery["id"] == "crm-paused" and delivery["data"]["event"]["first_name"] == "Fay"


async def test_replay_the_dead_letters_of_a_subscription(sections: Sections) -> None:
    await sections.login()
    csrf = {"X-CSRF-Token": await sections.csrf()}
    other = len(await sections.runtime.bus.dead_letters(f"sub:{FILE_SUB}"))
    replayed = await sections.client.post(f"/console/subscriptions/{HOOK}/replay", headers=csrf)
    assert replayed.status_code == 200
    assert f"{HOOK_DEAD_LETTERS} dead letter(s) queued for replay" in replayed.text

    # at least once: the embedded bus may hand a replayed letter out again while its first
    # delivery is still in flight
    async def delivered() -> bool:
        stats = (await sections.subscription(HOOK))["stats"]
        return bool(stats["delivered"] >= CRM_EVENTS and {
            r.json["id"] for r in sections.hook.ok()} == {"crm-1", "crm-2", "crm-3"})

    await wait_until(delivered, "the replayed CRM events to be delivered")
    # the undecodable message fails again: it is the one dead letter left, and other
    # subscriptions' dead letters were not touched
    async def settled() -> bool:
        return len(await sections.runtime.bus.dead_letters(f"sub:{HOOK}")) == 1

    await wait_until(settled, "the undecodable message to be dead-lettered again")
    assert len(await sections.runtime.bus.dead_letters(f"sub:{FILE_SUB}")) == other
    page = await sections.client.get(f"/console/dead-letters?group=sub:{HOOK}")
    assert "undecodable event" in page.text and page.text.count('class="dead-letter"') == 1


async def test_actions_on_an_unknown_subscription_are_404(sections: Sections) -> None:
    await sections.login()
    csrf = {"X-CSRF-Token": await sections.csrf()}
    for action in ("pause", "resume", "replay"):
        response = await sections.client.post(f"/console/subscriptions/nope/{action}",
                                              headers=csrf)
        assert response.status_code == 404, action
        assert "no subscription 'nope'" in response.text


async def test_journeys_show_counts_per_step(sections: Sections) -> None:
    await sections.login()
    page = await sections.client.get("/console/journeys")
    assert page.status_code == 200
    html = page.text[page.text.index(f'data-journey="{JOURNEY}"'):]
    whole = _row(html, "data-step", "*")
    assert [_cell(whole, c) for c in ("entered", "waiting", "completed", "exited")] == \
        ["2", "0", "1", "0"]
    wait = _row(html, "data-step", "wait_login")
    assert [_cell(wait, c) for c in ("entered", "waiting", "completed", "exited")] == \
        ["2", "1", "1", "0"]
    assert "wait until type com.example.app.login (then greet), at most 7d" in wait
    greet = _row(html, "data-step", "greet")
    assert [_cell(greet, c) for c in ("entered", "waiting", "completed")] == ["1", "0", "1"]
    # the API answers the same figures
    api = await sections.client.get("/v1/journeys",
                                    headers={"Authorization": "Bearer ak_admin_123"})
    steps = api.json()["journeys"][0]["steps"]
    assert steps["wait_login"] == {"entered": 2, "waiting": 1, "completed": 1, "exited": 0}


async def test_customer_360_shows_the_journeys_of_the_customer(sections: Sections) -> None:
    await sections.login()
    dan = await sections.client.get(f"/console/profiles/{sections.resolve('user_id:u-dan')}")
    row = _row(dan.text, "data-journey", JOURNEY)
    assert _cell(row, "status").startswith("active") and "wait_login" in row
    eve = await sections.client.get(f"/console/profiles/{sections.resolve('user_id:u-eve')}")
    assert _cell(_row(eve.text, "data-journey", JOURNEY), "status") == "completed"
    bob = await sections.client.get(
        f"/console/profiles/{sections.resolve('member_number:M-2002')}")
    section = bob.text[bob.text.index('id="journeys"'):]
    assert "Not in any journey." in section.split("</section>")[0]


async def test_catalog_lists_types_and_violations(sections: Sections) -> None:
    await sections.login()
    page = await sections.client.get("/console/catalog")
    assert page.status_code == 200
    row = _row(page.text, "data-type", ORDER_TYPE)
    assert _cell(row, "violations") == "1" and _cell(row, "quarantined") == "1"
    assert "v1" in row and "retail" in row
    violation = page.text[page.text.index('class="violation"'):]
    assert "/data/amount: must be of type number" in violation.split("</tr>")[0]
    assert "quarantined" in violation.split("</tr>")[0]
    store = re.search(r"<tr><td>store</td><td>(\w+)</td>", page.text)
    assert store and store.group(1) == "quarantine"


async def test_a_catalog_type_shows_its_schema_and_quarantined_events(
    sections: Sections,
) -> None:
    await sections.login()
    page = await sections.client.get(f"/console/catalog/types/{ORDER_TYPE}")
    assert page.status_code == 200
    schema = page.text[page.text.index('id="schemas"'):page.text.index('id="violations"')]
    assert f"urn:tessera:schema:{ORDER_TYPE}:v1" in schema
    assert "&#34;minimum&#34;: 0" in schema or '"minimum": 0' in schema
    quarantined = _row(page.text, "data-event-id", QUARANTINED_ID)
    assert "<code>/data/amount</code>:" in quarantined
    assert "12.50" in quarantined  # the event itself, for whoever fixes it
    missing = await sections.client.get("/console/catalog/types/com.example.nope")
    assert missing.status_code == 404 and "not an event type of the catalog" in missing.text


async def test_review_shows_the_candidates_fields_side_by_side(sections: Sections) -> None:
    await sections.login()
    page = await sections.client.get("/console/identity-review")
    assert page.status_code == 200
    bob, web_bob = sections.resolve("member_number:M-2002"), sections.resolve("user_id:u-bob")
    assert "0.9312" in page.text and bob in page.text and web_bob in page.text
    first = _row(page.text, "data-field", "first_name")
    assert first.count("<td class=\"value\">Bob</td>") == 2 and ">same<" in first
    last = _row(page.text, "data-field", "last_name")
    assert last.count("Smith") == 2
    assert "member_number:M-2002" in page.text and "user_id:u-bob" in page.text


@pytest.mark.parametrize("decision", ["accept", "reject"])
async def test_review_decisions_go_through_the_matcher_and_are_remembered(
    sections: Sections, decision: str
) -> None:
    await sections.login()
    bob, web_bob = sections.resolve("member_number:M-2002"), sections.resolve("user_id:u-bob")
    csrf = {"X-CSRF-Token": await sections.csrf(), **FORM}
    bad = await sections.client.post(f"/console/identity-review/{decision}", headers=csrf,
                                     content=f"a={bob}")
    assert bad.status_code == 400 and "b: give the pair" in bad.text
    unknown = await sections.client.post(f"/console/identity-review/{decision}", headers=csrf,
                                         content=f"a={bob}&b=prf_nobody")
    assert unknown.status_code == 404
    done = await sections.client.post(f"/console/identity-review/{decision}", headers=csrf,
                                      content=f"a={bob}&b={web_bob}")
    assert done.status_code == 200
    review = ReviewStore.in_data_dir(sections.runtime.data_dir)
    pair = review.get(bob, web_bob)
    review.close()
    assert pair is not None and pair.decided_by == "console"
    if decision == "accept":
        assert pair.state == "merged" and "merged" in done.text
        assert sections.resolve("user_id:u-bob") == sections.resolve("member_number:M-2002")
    else:
        assert pair.state == "rejected" and "will not propose this pair again" in done.text
        assert sections.resolve("user_id:u-bob") != sections.resolve("member_number:M-2002")
    page = await sections.client.get("/console/identity-review")
    assert "No candidates are waiting" in page.text
