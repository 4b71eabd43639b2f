"""Data subject requests and the personalization state: an access export shows the
person's computed traits, audience memberships and offer history; an erasure removes
them at once (no personalization processor needs to run), with one exit per membership."""

from __future__ import annotations

import time

import orjson

from tessera.events.envelope import iso_time
from tessera.personalization.service import PersonalizationService
from tests.api.helpers import Api
from tests.privacy.people import (
    BOB_EMAIL,
    JANE_EMAIL,
    access,
    erase,
    event,
    populate,
    send,
)

CONTACT_CENTER = "wk_contact_center_123"


async def personalize(api: Api) -> PersonalizationService:
    """Jane is offered the Roadside Plus upgrade at the contact center and declines it;
    both processors run."""
    now = time.time()
    for outcome, ago in (("presented", 60.0), ("declined", 30.0)):
        await send(api, CONTACT_CENTER, orjson.dumps({
            "specversion": "1.0", "id": f"offer-{outcome}", "source": "desk",
            "type": f"com.example.contact_center.offer.{outcome}",
            "time": iso_time(now - ago),
            "data": {"email": JANE_EMAIL, "action": "roadside_plus_upgrade",
                     "channel": "contact_center"}}))
    await api.process()
    service = PersonalizationService.from_runtime(api.runtime)
    await service.run_until_idle()
    return service


async def test_the_access_export_includes_the_personalization_state(api: Api) -> None:
    await populate(api)
    service = await personalize(api)
    try:
        export = await access(api, f"email:{JANE_EMAIL}")
        pid = export["profile_id"]
        mine = export["personalization"]
        assert mine["computed_traits"][pid]["last_channel"] == "contact_center"
        segments = {s["segment"]: s for s in mine["segments"]}
        assert segments["marketing_email_consent"]["profile_id"] == pid
        assert segments["marketing_email_consent"]["origin"] == "config"
        assert segments["marketing_email_consent"]["since"].endswith("Z")
        assert [(o["action"], o["channel"], o["outcome"]) for o in mine["offers"]] == [
            ("roadside_plus_upgrade", "contact_center", "presented"),
            ("roadside_plus_upgrade", "contact_center", "declined")]
        caps = {(c["action"], c["channel"]): c for c in mine["caps"]}
        desk = caps[("roadside_plus_upgrade", "contact_center")]
        assert desk["status"] == "cap" and desk["reasons"][0].startswith("cooldown")
        assert caps[("roadside_plus_upgrade", "email")]["status"] == "cap"  # any channel

        bob = await access(api, f"email:{BOB_EMAIL}")
        assert bob["personalization"]["offers"] == [] and bob["personalization"]["caps"] == []
        assert {s["profile_id"] for s in bob["personalization"]["segments"]} <= {
            bob["profile_id"]}
        assert set(bob["personalization"]["computed_traits"]) == {bob["profile_id"]}
    finally:
        service.state.close()


async def test_erasure_removes_the_personalization_state_at_once(api: Api) -> None:
    await populate(api)
    service = await personalize(api)
    state = service.state
    try:
        jane = (await access(api, f"email:{JANE_EMAIL}"))["profile_id"]
        bob = (await access(api, f"email:{BOB_EMAIL}"))["profile_id"]
        had = state.memberships_of(jane)
        assert had and state.offers_of(jane) and state.trait_states_of(jane)
        bob_had = state.memberships_of(bob), state.trait_states_of(bob)

        report = await erase(api, f"email:{JANE_EMAIL}")
        # no personalization processor has run since: the erasure did it
        assert report["personalization_memberships"] == len(had)
        known = set(state.profile_ids())
        assert not known & set(report["profile_ids"])
        assert (state.memberships_of(bob), state.trait_states_of(bob)) == bob_had

        # the processor reads profile.erased afterwards and finds nothing left to do
        await service.run_until_idle()
        exits = []
        while batch := await api.runtime.bus.fetch("derived", "test-exits", 500, 0.01):
            exits += [orjson.loads(d.payload) for d in batch]
            await api.runtime.bus.ack(batch)
        exits = [e for e in exits if e["type"] == "segment.exited"
                 and e["data"]["profile_id"] == jane]
        assert sorted(e["data"]["segment"] for e in exits) == sorted(had)
        assert {e["data"]["reason"] for e in exits} == {"erased"}
        assert JANE_EMAIL not in str(exits)
    finally:
        state.close()


async def test_erasure_without_any_personalization_state_creates_none(api: Api) -> None:
    await send(api, "wk_web_123", event("x1", {"email": JANE_EMAIL}))
    await api.process()
    report = await erase(api, f"email:{JANE_EMAIL}")
    assert report["personalization_memberships"] == 0
    assert not (api.runtime.data_dir / "personalization.db").exists()
