"""The main operations document their success bodies in /openapi.json, and real answers
match them: a check that does not depend on generated requests reaching a 2xx."""

from __future__ import annotations

from typing import Any

import jsonschema

from tests.api.helpers import READ_KEY, Api, bearer
from tests.privacy.people import ADMIN, JANE_EMAIL, event, populate

OPERATIONS = {
    ("post", "/v1/events"): ("202", "CloudEventsAccepted"),
    ("post", "/v1/batch"): ("200", "SegmentAccepted"),
    ("post", "/v1/track"): ("200", "SegmentAccepted"),
    ("get", "/v1/profiles/{identifier}"): ("200", "ProfileOut"),
    ("get", "/v1/profiles/{identifier}/identities"): ("200", "ProfileIdentities"),
    ("get", "/v1/profiles/{identifier}/events"): ("200", "EventsPage"),
    ("post", "/v1/privacy/access"): ("200", "AccessExport"),
    ("post", "/v1/privacy/erasure"): ("200", "ErasureResult"),
    ("post", "/v1/subscriptions"): ("201", "SubscriptionOut"),
    ("get", "/v1/subscriptions"): ("200", "SubscriptionList"),
    ("get", "/v1/subscriptions/{name}"): ("200", "SubscriptionOut"),
}
SUBSCRIPTION = {"name": "doc-sync", "filter": {"types": ["com.example.membership.*"]},
                "shape": "fat", "purpose": "marketing_email",
                "destination": {"type": "webhook", "url": "http://127.0.0.1:9/hook",
                                "secret": "s3cret-value-long-enough"}}


async def _doc(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def _validator(doc: dict[str, Any], method: str, path: str) -> jsonschema.Draft202012Validator:
    status, _ = OPERATIONS[(method, path)]
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
        "schema"]
    resolvable = {**schema, "components": doc["components"]}
    return jsonschema.Draft202012Validator(resolvable)


async def test_the_main_operations_name_their_success_body(api: Api) -> None:
    doc = await _doc(api)
    for (method, path), (status, model) in OPERATIONS.items():
        schema = doc["paths"][path][method]["responses"][status]["content"][
            "application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, (method, path)
        assert doc["components"]["schemas"][model]["required"], model


async def test_real_answers_match_the_documented_bodies(api: Api) -> None:
    doc = await _doc(api)
    await populate(api)
    ident = f"email:{JANE_EMAIL}"
    answers = {
        ("get", "/v1/profiles/{identifier}"): await api.client.get(
            f"/v1/profiles/{ident}", headers=bearer(READ_KEY)),
        ("get", "/v1/profiles/{identifier}/identities"): await api.client.get(
            f"/v1/profiles/{ident}/identities", headers=bearer(READ_KEY)),
        ("get", "/v1/profiles/{identifier}/events"): await api.client.get(
            f"/v1/profiles/{ident}/events?limit=1", headers=bearer(READ_KEY)),
        ("post", "/v1/privacy/access"): await api.client.post(
            "/v1/privacy/access", headers=ADMIN, json={"identifier": ident}),
        ("post", "/v1/events"): await api.client.post(
            "/v1/events", headers={"Content-Type": "application/cloudevents+json",
                                   **bearer("wk_crm_123")},
            content=event("doc-0", {"email": "doc@example.org"})),
        ("post", "/v1/batch"): await api.client.post(
            "/v1/batch", headers=bearer("wk_web_123"),
            json={"batch": [{"type": "page", "anonymousId": "a-doc", "messageId": "doc-2"}]}),
        ("post", "/v1/track"): await api.client.post(
            "/v1/track", headers=bearer("wk_web_123"),
            json={"userId": "u-doc", "event": "Doc Checked", "messageId": "doc-1"}),
    }
    answers[("post", "/v1/subscriptions")] = await api.client.post(
        "/v1/subscriptions", headers=ADMIN, json=SUBSCRIPTION)
    answers[("get", "/v1/subscriptions")] = await api.client.get("/v1/subscriptions",
                                                                 headers=ADMIN)
    answers[("get", "/v1/subscriptions/{name}")] = await api.client.get(
        "/v1/subscriptions/doc-sync", headers=ADMIN)
    answers[("post", "/v1/privacy/erasure")] = await api.client.post(
        "/v1/privacy/erasure", headers=ADMIN, json={"identifier": ident})
    for (method, path), response in answers.items():
        assert response.status_code == int(OPERATIONS[(method, path)][0]), response.text
        errors = [e.message for e in _validator(doc, method, path).iter_errors(response.json())]
        assert errors == [], (path, errors)
    page = answers[("get", "/v1/profiles/{identifier}/events")].json()
    assert page["next_cursor"] is not None  # the nullable field, in its string form
    broken = {**answers[("get", "/v1/profiles/{identifier}")].json(), "event_count": "many"}
    assert list(_validator(doc, "get", "/v1/profiles/{identifier}").iter_errors(broken))


async def test_a_subscription_body_is_parsed_strictly(api: Api) -> None:
    twice = b'{"name": "a-sub", "name": "b-sub", "destination": {"type": "webhook", ' \
            b'"url": "http://127.0.0.1:9/x"}}'
    response = await api.client.post("/v1/subscriptions", content=twice,
                                     headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "(body)", "reason": "duplicate key 'name' in one object"}]
    listed = (await api.client.get("/v1/subscriptions", headers=ADMIN)).json()
    assert [s["name"] for s in listed["subscriptions"]] == []
