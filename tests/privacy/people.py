"""Jane (two source identities the graph merges) and Bob, as CloudEvents over HTTP."""

from __future__ import annotations

from typing import Any

import orjson

from tests.api.helpers import Api, bearer

ADMIN = bearer("ak_admin_123")
JANE_EMAIL = "jane.quixote@example.org"
JANE_PHONE = "+14155550199"
JANE_USER = "u-jane-7781"
JANE_NAME = "Janette Quixote"
JANE_CITY = "Zanzibar-upon-Tyne"
JANE_VALUES = [JANE_EMAIL, JANE_PHONE, JANE_USER, JANE_NAME, JANE_CITY]
BOB_EMAIL = "bob.roberts@example.net"


def event(event_id: str, data: dict[str, Any], type_: str = "com.example.crm.contact.updated",
          ) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": event_id, "source": "crm",
                         "type": type_, "time": "2026-01-02T03:04:05Z", "data": data})


async def send(api: Api, key: str, body: bytes) -> None:
    response = await api.client.post(
        "/v1/events", headers={"Content-Type": "application/cloudevents+json", **bearer(key)},
        content=body)
    assert response.status_code == 202, response.text


async def populate(api: Api) -> None:
    """Jane arrives as two profiles (web: email; app: user id and phone) that one later
    event merges; Bob shares nothing with her."""
    await send(api, "wk_web_123", event("j1", {"email": JANE_EMAIL.upper(), "traits": {
        "name": JANE_NAME, "city": JANE_CITY}}))
    await send(api, "wk_app_123", event("j2", {"userId": JANE_USER, "phone": "+1 415 555 0199",
                                               "consent": {"marketing_email": True}}))
    await api.process()
    await send(api, "wk_crm_123", event("j3", {"userId": JANE_USER, "email": JANE_EMAIL}))
    await send(api, "wk_web_123", event("b1", {"email": BOB_EMAIL, "traits": {"name": "Bob"}}))
    await api.process()


async def _request(api: Api, kind: str, identifier: str) -> dict[str, Any]:
    response = await api.client.post(f"/v1/privacy/{kind}", headers=ADMIN,
                                     json={"identifier": identifier})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def erase(api: Api, identifier: str) -> dict[str, Any]:
    return await _request(api, "erasure", identifier)


async def access(api: Api, identifier: str) -> dict[str, Any]:
    """The access export of the person ``identifier`` names."""
    return await _request(api, "access", identifier)
