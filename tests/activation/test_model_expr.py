"""Subscription and journey models, filters, conditions, templates, signatures."""

from __future__ import annotations

import pytest

from tessera.activation.expr import holds, matches, render
from tessera.activation.model import Condition, Filter, SubscriptionConfig, parse_duration
from tessera.activation.signing import sign, verify
from tessera.config import ConfigError
from tessera.events.envelope import Event
from tests.activation.helpers import config_with


def event(type_: str = "com.example.membership.updated", **data: object) -> Event:
    return Event(id="e1", source="https://crm.example.com", type=type_, time=0.0,
                 received_at=0.0, source_name="membership", data=dict(data), subject="M-1",
                 extensions={"region": "eu-west"})


def test_standard_webhooks_reference_vector() -> None:
    # the example of the Standard Webhooks specification's reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": f"v1,bm9wZQ== {sig}"}
    assert verify(secret, headers, body, now=1614265330 + 10)
    assert not verify(secret, headers, body, now=1614265330 + 3600)  # stale


def test_durations() -> None:
    assert parse_duration("30m") == 1800 and parse_duration("500ms") == 0.5
    assert parse_duration(2) == 2.0 and parse_duration("1.5h") == 5400
    for bad in ("soon", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_filter_types_sources_attributes() -> None:
    flt = Filter(types=["com.example.membership.*"], sources=["membership"],
                 attributes={"region": "eu-*", "subject": ["M-1", "M-2"]})
    assert matches(flt, event(), {})
    assert not matches(flt, event("com.example.web.page_viewed"), {})
    assert not matches(Filter(sources=["crm"]), event(), {})
    assert matches(Filter(sources=["https://crm.example.*"]), event(), {})
    assert not matches(Filter(attributes={"region": "us-*"}), event(), {})


def test_conditions() -> None:
    ctx = {"data": {"status": "driver_assigned", "eta": 25, "tags": ["a"]},
           "profile": {"traits": {"tier": "gold"}}}

    def c(raw: dict[str, object]) -> bool:
        return holds(Condition.model_validate(raw), ctx)

    assert c({"path": "data.status", "eq": "driver_assigned"})
    assert c({"path": "data.eta", "gte": 10, "lt": 30})
    assert not c({"path": "data.eta", "gt": "x"})  # a number is never more than text
    assert c({"path": "profile.traits.tier", "in": ["gold", "platinum"]})
    assert c({"path": "data.tags", "contains": "a"})
    assert c({"path": "data.missing", "exists": False})
    assert c({"path": "data.missing", "ne": 1})
    assert c({"any": [{"path": "data.eta", "lt": 5}, {"path": "data.status", "like": "driver_*"}]})
    assert c({"not": {"path": "data.status", "eq": "opened"}})
    with pytest.raises(ValueError):
        Condition.model_validate({"path": "data.status"})  # no operator
    with pytest.raises(ValueError):
        Condition.model_validate({"all": [], "any": []})


def test_templates_keep_types_of_whole_placeholders() -> None:
    ctx = {"data": {"eta": 25, "items": [{"sku": "X"}]}, "profile": None}
    assert render({"m": "in {{ data.eta }} min", "n": "{{ data.eta }}",
                   "sku": "{{data.items.0.sku}}", "none": "{{ profile.traits.x }}"}, ctx) == {
        "m": "in 25 min", "n": 25, "sku": "X", "none": None}


def test_subscription_needs_profile_only_when_it_uses_it() -> None:
    def sub(**kw: object) -> SubscriptionConfig:
        return SubscriptionConfig.model_validate(
            {"name": "s", "destination": {"type": "file", "path": "x"}, **kw})

    assert sub(shape="fat").needs_profile()
    assert not sub(shape="notification").needs_profile()
    assert sub(shape={"fields": {"t": "profile.traits.tier"}}).needs_profile()
    assert sub(shape="event", filter={"condition": {"path": "profile.traits.tier",
                                                    "eq": "gold"}}).needs_profile()


def test_config_sections_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        config_with(subscriptions=[{"name": "s", "destination": "d", "filtr": {}}])
    with pytest.raises(ConfigError, match="no step 'nowhere'"):
        config_with(journeys=[{"name": "j", "trigger": {}, "steps": [
            {"id": "a", "condition": {"if": {"path": "x", "exists": True},
                                      "then": "nowhere"}}]}])
    with pytest.raises(ConfigError, match="needs a 'timeout'"):
        config_with(journeys=[{"name": "j", "trigger": {}, "steps": [
            {"id": "a", "wait": {"until": {"types": ["x"]}}}]}])
    cfg = config_with(destinations={"d": {"type": "webhook", "url": "http://127.0.0.1:1/h"}},
                      subscriptions=[{"name": "s", "destination": "d"}])
    assert cfg.subscriptions[0].destination == "d"
