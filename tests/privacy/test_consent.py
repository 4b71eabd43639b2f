"""Consent per purpose: captured from events with source and time, read by has_consent,
and enforced in activation (a subscription with a purpose delivers only with consent)."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest

from tessera.activation.model import Purpose
from tessera.privacy.consent import PURPOSES, consent_traits, has_consent
from tessera.store.base import Trait
from tests.activation.helpers import config_with, running, wait_for, webhook
from tests.activation.receiver import Receiver
from tests.api.helpers import WRITE_KEY, Api, basic


def test_the_subscription_purposes_are_the_consent_purposes() -> None:
    assert set(typing.get_args(Purpose)) == set(PURPOSES)


def test_consent_objects_become_traits_and_only_true_consents() -> None:
    assert consent_traits({"categoryPreferences": {"marketing_email": True, "Ads": True},
                           "analytics": False, "marketing_sms": "yes"}) == {
        "consent.marketing_email": True, "consent.analytics": False}
    traits = {"consent.marketing_email": Trait(True, "web", 1.0),
              "consent.marketing_sms": Trait("true", "web", 1.0),
              "consent.analytics": {"value": False, "source": "web"}}
    assert has_consent(traits, "marketing_email")
    assert not has_consent(traits, "marketing_sms")  # a string is not a decision
    assert not has_consent(traits, "analytics")
    assert not has_consent(traits, "personalization")  # no decision: no consent
    assert has_consent({"consent.personalization": True}, "personalization")


async def test_segment_context_consent_is_kept_with_its_source_and_time(api: Api) -> None:
    for n, (granted, ts) in enumerate([(True, "2026-01-01T00:00:00Z"),
                                       (False, "2026-02-01T00:00:00Z")]):
        body = {"batch": [{"type": "track", "event": "Consent Changed", "userId": "u-c1",
                           "messageId": f"c{n}", "timestamp": ts,
                           "context": {"consent": {"categoryPreferences": {
                               "marketing_email": granted, "analytics": True}}}}]}
        response = await api.client.post("/v1/batch", headers=basic(WRITE_KEY), json=body)
        assert response.status_code == 200, response.text
    await api.process()
    profile = await api.profile("user_id:u-c1")
    email = profile["traits"]["consent.marketing_email"]
    assert email["value"] is False  # the later decision wins
    assert email["source"] == "web" and email["time"].startswith("2026-02-01")
    assert profile["traits"]["consent.analytics"]["value"] is True
    assert not has_consent(profile["traits"], "marketing_email")
    assert has_consent(profile["traits"], "analytics")


async def test_a_subscription_with_a_purpose_delivers_only_with_consent(tmp_path: Path) -> None:
    with Receiver() as rx:
        sub = {"name": "newsletter", "filter": {"types": ["com.example.order.*"]},
               "shape": "event", "purpose": "marketing_email", "destination": webhook(rx.url)}
        async with running(config_with(subscriptions=[sub]), tmp_path) as h:
            await h.send({"email": "yes@example.com", "consent": {"marketing_email": True}},
                         "com.example.consent.set")
            await h.send({"email": "no@example.com", "consent": {"marketing_email": False}},
                         "com.example.consent.set")
            for who in ("yes", "no", "unknown"):
                await h.send({"email": f"{who}@example.com", "order": who},
                             "com.example.order.placed")
            await wait_for(lambda: len(rx.ok()) == 1, what="the consented delivery")
            await wait_for(lambda: h.activation.state.get("newsletter").filtered_out >= 2,  # type: ignore[union-attr]
                           what="the others filtered out")
            await asyncio.sleep(0.3)
        got = rx.all()
    assert [r.json["data"]["order"] for r in got] == ["yes"]


CANDIDATES: list[object] = [True, False, "yes", "true", "granted", 1, 0, None, {"value": True},
                            [True], "missing"]


@pytest.mark.parametrize("value", CANDIDATES, ids=repr)
def test_activation_next_best_action_and_audiences_honour_the_same_values(
    value: object, tmp_path: Path
) -> None:
    """One person, one stored consent value: every place that acts on it gives one answer,
    and it is yes only for ``true``."""
    from tessera.activation.delivery import _consents
    from tessera.activation.expr import profile_snapshot
    from tessera.events.envelope import Event
    from tessera.personalization.engine import Personalizer
    from tessera.personalization.model import PersonalizationConfig
    from tessera.personalization.nba import DecisionEngine
    from tessera.personalization.rules import evaluate
    from tessera.personalization.state import open_state
    from tessera.store.base import Profile
    from tessera.store.sqlite import SQLiteStore

    config = PersonalizationConfig.model_validate({
        "audiences": [{"name": "emailable", "rule": {"consent": "marketing_email"}}],
        "actions": [{"name": "offer", "channels": ["email"],
                     "requires_consent": ["marketing_email"], "priority": 1}],
    }, strict=False)
    traits = {} if value == "missing" else {
        "consent.marketing_email": Trait(value, "crm", 1.0, 0, "e1")}
    profile = Profile(id="prf_1", created_at=1.0, updated_at=1.0, event_count=1, traits=traits)
    expected = value is True

    event = Event(id="e2", source="crm", type="com.example.crm.contact.updated", time=2.0,
                  received_at=2.0, source_name="crm", data={})
    activation = _consents("marketing_email", event, profile_snapshot(profile))
    store = SQLiteStore(tmp_path / "store.db")
    state = open_state(None, tmp_path)
    try:
        facts = Personalizer(config, store, state).facts("prf_1", profile, {}, 3.0)
        audience = evaluate(config.audiences[0].rule, facts)
        decision = DecisionEngine(config).decide(facts, [], "email", 3, 3.0)
    finally:
        store.close()
        state.close()
    nba = [c.action for c in decision.chosen] == ["offer"]
    assert (activation, audience, nba, has_consent(traits, "marketing_email")) == (
        expected, expected, expected, expected)
