"""The console's pages, in-process: login, search, Customer 360, dead letters."""

from __future__ import annotations

import re

from tessera.console.session import COOKIE
from tests.console.conftest import FORM, READ_KEY, Console
from tests.console.scenario import (
    EVENTS,
    FAILED_ERROR,
    FAILED_EVENT,
    MERGE_EVENT_TYPE,
    POISON_ID,
    cloudevent,
)


async def test_every_page_needs_a_login(console: Console) -> None:
    letters = len(await console.runtime.bus.dead_letters())
    for path in ("/console", "/console/profiles?q=x", "/console/dead-letters",
                 "/console/profiles/prf_x", "/console/overview/stats", "/console/journeys"):
        response = await console.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/console/login?next=%2Fconsole"), path
    htmx = await console.client.get("/console/overview/stats", headers={"HX-Request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["HX-Redirect"].startswith("/console/login")
    assert (await console.client.get("/console/tail")).status_code == 401
    replay = await console.client.post("/console/dead-letters/1/replay")
    assert replay.status_code == 303
    assert len(await console.runtime.bus.dead_letters()) == letters


async def test_only_an_admin_key_logs_in(console: Console) -> None:
    wrong = await console.login("nope")
    assert wrong.status_code == 401
    assert "not an API key with the admin scope" in wrong.text
    reader = await console.login(READ_KEY)
    assert reader.status_code == 401
    assert COOKIE not in console.client.cookies

    ok = await console.login()
    assert ok.status_code == 303
    assert ok.headers["location"] == "/console"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert "ak_admin_123" not in cookie
    page = await console.client.get("/console")
    assert page.status_code == 200
    assert "<h1>Overview</h1>" in page.text


async def test_login_goes_back_to_the_page_asked_for_but_never_off_site(console: Console) -> None:
    back = await console.client.post("/console/login", headers=FORM,
                                     content="key=ak_admin_123&next=%2Fconsole%2Fdead-letters")
    assert back.headers["location"] == "/console/dead-letters"
    away = await console.client.post("/console/login", headers=FORM,
                                     content="key=ak_admin_123&next=https%3A%2F%2Fevil.example")
    assert away.headers["location"] == "/console"


async def test_a_tampered_cookie_or_a_removed_key_ends_the_session(console: Console) -> None:
    await console.login()
    token = console.client.cookies[COOKIE]
    console.client.cookies.set(COOKIE, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
                               path="/console")
    assert (await console.client.get("/console")).status_code == 303

    console.client.cookies.clear()
    await console.login()
    assert (await console.client.get("/console")).status_code == 200
    del console.runtime.api_keys["ak_admin_123"]
    assert (await console.client.get("/console")).status_code == 303


async def test_logout_forgets_the_session(console: Console) -> None:
    await console.login()
    out = await console.client.post("/console/logout")
    assert out.status_code == 303
    assert (await console.client.get("/console")).status_code == 303


async def test_overview_shows_counts_lag_and_dead_letters(console: Console) -> None:
    await console.login()
    page = await console.client.get("/console")
    assert page.status_code == 200
    assert re.search(r'data-lag="profiles">0<', page.text)
    # the failed event, and the undecodable message once per consumer group of events
    letters = await console.runtime.bus.dead_letters()
    assert len(letters) > 2
    assert re.search(rf'data-stat="dead-letters"><a href="/console/dead-letters">{len(letters)}<',
                     page.text)
    assert "Delivery failures" in page.text and "No subscriptions." in page.text
    assert 'data-src="/console/tail"' in page.text
    fragment = await console.client.get("/console/overview/stats")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert "Processing lag" in fragment.text


async def test_search_finds_a_customer_by_any_identifier(console: Console) -> None:
    await console.login()
    jane = console.resolve("member_number:M-1001")
    for query in ("JANE@Example.com ", "email:jane@example.com", "M-1001", "u-42",
                  "user_id:u-42", "jane.doe@work.example", jane):
        response = await console.client.get("/console/profiles", params={"q": query})
        assert response.status_code == 303, query
        assert response.headers["location"] == f"/console/profiles/{jane}", query
    missing = await console.client.get("/console/profiles", params={"q": "nobody@example.com"})
    assert missing.status_code == 200
    assert "No profile has an identifier matching" in missing.text
    empty = await console.client.get("/console/profiles")
    assert empty.status_code == 200 and "Any identifier" in empty.text


async def test_a_merged_profile_id_leads_to_the_survivor(console: Console) -> None:
    await console.login()
    jane = console.resolve("member_number:M-1001")
    profile = console.runtime.store.get_profile(jane)
    assert profile is not None and len(profile.merged_from) == 1
    merged = profile.merged_from[0].merged
    response = await console.client.get(f"/console/profiles/{merged}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/profiles/{jane}"


async def test_customer_360_shows_traits_identity_graph_merge_and_timeline(
    console: Console,
) -> None:
    await console.login()
    jane = console.resolve("member_number:M-1001")
    profile = console.runtime.store.get_profile(jane)
    assert profile is not None
    merged = profile.merged_from[0].merged
    page = await console.client.get(f"/console/profiles/{jane}")
    assert page.status_code == 200
    html = page.text
    assert "Jane Doe" in html
    # traits with source and time
    assert re.search(r"<td>membership_tier</td><td class=\"value\">gold</td><td>membership</td>",
                     html)
    assert "2026-03-04 12:00:00 UTC" in html
    # the identity graph: every identifier, the merged profile, the identifiers of the merge
    svg = html[html.index("<svg"): html.index("</svg>")]
    for ident in ("member_number:M-1001", "email:jane@example.com", "user_id:u-42",
                  "email:jane.doe@work.example"):
        assert f'data-identifier="{ident}"' in svg, ident
    assert f'data-merged="{merged}"' in svg
    carried = re.findall(r'<g class="link in-merge-event[^"]*" data-identifier="([^"]+)"', svg)
    assert sorted(carried) == ["member_number:M-1001", "user_id:u-42"]
    # why they merged, in words
    reason = html[html.index("Why these profiles were merged"):]
    assert merged in reason
    assert MERGE_EVENT_TYPE in reason and "<strong>app</strong>" in reason
    assert "<code>member_number:M-1001</code>" in reason and "<code>user_id:u-42</code>" in reason
    # the timeline, newest event time first, and the honest "not yet" sections
    timeline = html[html.index('id="timeline"'):]
    types = re.findall(r"<td><code>([a-z.]+)</code></td>", timeline)
    assert types[:4] == ["com.example.membership.renewed", MERGE_EVENT_TYPE,
                         "com.example.web.signup", "com.example.crm.contact.updated"]
    assert "Not available yet" not in html
    assert "No journeys are configured." in html


async def test_customer_360_shows_segments_next_best_actions_and_consent(
    console: Console,
) -> None:
    await console.login()
    await console.client.post(
        "/v1/events", json=cloudevent({
            "id": "crm-consent", "source": "crm", "type": "com.example.crm.contact.updated",
            "time": "2026-03-05T09:00:00Z",
            "data": {"member_number": "M-2002", "consent": {"email": True}}}),
        headers={"Authorization": "Bearer wk_crm_123",
                 "Content-Type": "application/cloudevents+json"})
    await console.process()
    jane = (await console.client.get(
        f"/console/profiles/{console.resolve('member_number:M-1001')}")).text
    bob = (await console.client.get(
        f"/console/profiles/{console.resolve('member_number:M-2002')}")).text
    # segments, as the personalization processor computed them
    segments = jane[jane.index('id="segments"'):jane.index('id="next-best-actions"')]
    assert 'data-segment="members"' in segments
    assert 'data-segment="marketing_email_consent"' not in segments
    assert 'data-segment="marketing_email_consent"' in bob
    # next best actions per channel, with why an action was left out
    actions = jane[jane.index('id="next-best-actions"'):jane.index('id="consent"')]
    for channel in ("contact_center", "email", "web", "app"):
        assert f'data-channel="{channel}"' in actions, channel
    assert 'class="rejected" data-action="roadside_plus_upgrade"' in actions
    # consent: none recorded for Jane; Bob's comes from the CRM, with its time
    jane_consent = jane[jane.index('id="consent"'):]
    row = jane_consent[jane_consent.index('data-purpose="marketing_email"'):]
    assert "no decision (no consent)" in row.split("</tr>")[0]
    bob_consent = bob[bob.index('id="consent"'):]
    row = bob_consent[bob_consent.index('data-purpose="marketing_email"'):].split("</tr>")[0]
    assert "granted" in row and "<td>crm</td>" in row and "2026-03-05 09:00:00 UTC" in row


async def test_the_event_page_says_what_an_event_did(console: Console) -> None:
    await console.login()
    jane = console.resolve("member_number:M-1001")
    profile = console.runtime.store.get_profile(jane)
    assert profile is not None
    merge = profile.merged_from[0]
    page = await console.client.get(f"/console/profiles/{jane}/events/{merge.event_uid}")
    assert page.status_code == 200
    caused = page.text[page.text.index("merges it caused"):]
    assert merge.merged in caused.split("</tr>")[0]
    missing = await console.client.get(f"/console/profiles/{jane}/events/nope")
    assert missing.status_code == 404


async def test_the_timeline_pages_with_load_more(console: Console) -> None:
    await console.login()
    batch = [cloudevent({"id": f"v-{i}", "source": "web", "type": "com.example.web.page_viewed",
                         "time": f"2026-04-01T10:{i:02d}:00Z", "data": {"userId": "u-77"}})
             for i in range(30)]
    response = await console.client.post(
        "/v1/events", json=batch,
        headers={"Authorization": "Bearer wk_web_123",
                 "Content-Type": "application/cloudevents-batch+json"})
    assert response.status_code == 202
    await console.process()
    pid = console.resolve("user_id:u-77")
    page = await console.client.get(f"/console/profiles/{pid}")
    first = re.findall(r"<summary class=\"mono\">", page.text)
    assert len(first) == 25
    more = re.search(r'hx-get="(/console/profiles/[^"]+/timeline\?cursor=[^"]+)"', page.text)
    assert more
    rest = await console.client.get(more.group(1).replace("&amp;", "&"))
    assert rest.status_code == 200
    assert len(re.findall(r"<summary class=\"mono\">", rest.text)) == 5
    assert "Load older events" not in rest.text
    assert "10:04:00" in rest.text and "10:29:00" not in rest.text


async def test_dead_letters_replay_needs_the_csrf_token(console: Console) -> None:
    await console.login()
    page = await console.client.get("/console/dead-letters")
    assert page.status_code == 200
    assert "undecodable event" in page.text and POISON_ID in page.text
    assert FAILED_ERROR in page.text
    letters = await console.runtime.bus.dead_letters()
    [failed] = [d for d in letters if d.message_id == FAILED_EVENT.uid]
    url = f"/console/dead-letters/{failed.id}/replay"

    forged = await console.client.post(url, headers={"X-CSRF-Token": "0" * 64})
    assert forged.status_code == 403
    missing = await console.client.post(url)
    assert missing.status_code == 403
    await console.process()
    assert len(await console.runtime.bus.dead_letters()) == len(letters)
    assert console.runtime.store.resolve("email:carol@example.com") is None

    replayed = await console.client.post(url, headers={"X-CSRF-Token": await console.csrf()})
    assert replayed.status_code == 200
    assert f'id="dl-{failed.id}"' in replayed.text
    assert "queued for replay" in replayed.text or "replayed 20" in replayed.text
    await console.process()
    assert console.runtime.store.resolve("email:carol@example.com") is not None
    left = {d.message_id for d in await console.runtime.bus.dead_letters()}
    assert left == {POISON_ID}

    again = await console.client.post(url, headers={"X-CSRF-Token": await console.csrf()})
    assert "replayed 20" in again.text and "hx-post" not in again.text
    unknown = await console.client.post("/console/dead-letters/999/replay",
                                        headers={"X-CSRF-Token": await console.csrf()})
    assert unknown.status_code == 404
    shown = await console.client.get("/console/dead-letters?all=1")
    assert 'class="dead-letter replayed"' in shown.text


async def test_sections_say_plainly_when_nothing_is_configured(console: Console) -> None:
    await console.login()
    expected = {
        "/console/subscriptions": "No subscriptions.",
        "/console/journeys": "No journeys are configured.",
        "/console/catalog": "No catalog is configured",
        "/console/identity-review": "No candidates are waiting.",
    }
    for path, text in expected.items():
        page = await console.client.get(path)
        assert page.status_code == 200, path
        assert text in page.text, path
        assert "Not available yet" not in page.text, path


async def test_assets_are_served_locally(console: Console) -> None:
    await console.login()
    for name, kind in (("htmx.min.js", "javascript"), ("console.js", "javascript"),
                       ("console.css", "css")):
        asset = await console.client.get(f"/console/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    assert (await console.client.get("/console/static/../session.py")).status_code == 404
    assert "htmx" in (await console.client.get("/console/static/htmx.min.js")).text[:100]
    page = await console.client.get(f"/console/profiles/{console.resolve('user_id:u-42')}")
    assert not re.search(r'(src|href)="(https?:)?//', page.text)


async def test_a_second_event_stream_is_not_needed_to_see_bob(console: Console) -> None:
    # the other customer of the scenario stays apart from Jane
    await console.login()
    bob = console.resolve("email:bob@example.com")
    assert bob != console.resolve("member_number:M-1001")
    page = await console.client.get(f"/console/profiles/{bob}")
    assert "Bob" in page.text and "no merges" in page.text
    assert len(EVENTS) == 5
