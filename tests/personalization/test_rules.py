"""The rule language: leaves, combinations, audiences in dependency order, config errors."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.config import ConfigError, parse_config
from tessera.personalization.model import AudienceConfig, Rule
from tessera.personalization.rules import Facts, audience_order, describe, evaluate, memberships


def rule(spec: dict[str, Any]) -> Rule:
    return Rule.model_validate(spec, strict=False)


def facts(**kw: Any) -> Facts:
    consents = kw.pop("consents", set())
    return Facts(profile_id="p1", consent=lambda purpose: purpose in consents, **kw)


def test_path_leaves_use_the_condition_operators() -> None:
    f = facts(traits={"tier": "classic"}, computed={"tows": 2},
              identifiers={"member_number": ["M-1"]})
    assert evaluate(rule({"path": "computed.tows", "gte": 2}), f)
    assert not evaluate(rule({"path": "computed.tows", "gt": 2}), f)
    assert evaluate(rule({"path": "traits.tier", "in": ["classic", "plus"]}), f)
    assert evaluate(rule({"path": "identifiers.member_number", "exists": True}), f)
    assert not evaluate(rule({"path": "identifiers.email", "exists": True}), f)
    assert evaluate(rule({"path": "profile_id", "eq": "p1"}), f)


def test_combinations_consent_audience_and_event_history() -> None:
    history = rule({"event": {"type": "ticket_created", "within": "30d", "min": 2}})
    assert history.event is not None
    name = history.event.trait().name
    f = facts(computed={name: 2}, consents={"marketing_email"}, audiences={"members"})
    assert evaluate(history, f)
    assert not evaluate(history, facts(computed={name: 1}))
    assert not evaluate(rule({"event": {"type": "ticket_created", "max": 1}}),
                        facts(computed={rule({"event": {"type": "ticket_created"}})
                                        .histories()[0].trait().name: 2}))
    combined = rule({"all": [{"consent": "marketing_email"}, {"audience": "members"},
                             {"not": {"consent": "marketing_sms"}}]})
    assert evaluate(combined, f)
    assert not evaluate(combined, facts(audiences={"members"}))
    assert evaluate(rule({"any": [{"consent": "x"}, {"audience": "members"}]}), f)


def test_the_same_history_condition_is_one_implicit_trait() -> None:
    a = rule({"event": {"type": "t", "within": "30d", "min": 2}}).histories()[0]
    b = rule({"event": {"type": "t", "within": "30d", "min": 5}}).histories()[0]
    c = rule({"event": {"type": "t", "within": "7d"}}).histories()[0]
    assert a.trait().name == b.trait().name != c.trait().name
    assert a.trait().window == 30 * 86400


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "a rule is one of"),
    ({"path": "traits.x"}, "needs an operator"),
    ({"eq": 1}, "need a 'path'"),
    ({"path": "traits.x", "eq": 1, "audience": "a"}, "found path, audience"),
    ({"event": {"type": "t", "within": "soon"}}, "not a duration"),
])
def test_invalid_rules_say_why(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule(spec)


def test_audiences_are_evaluated_after_those_they_refer_to() -> None:
    audiences = [AudienceConfig.model_validate(a, strict=False) for a in (
        {"name": "vip_members", "rule": {"all": [{"audience": "members"},
                                                 {"path": "traits.tier", "eq": "premier"}]}},
        {"name": "members", "rule": {"path": "identifiers.member_number", "exists": True}},
    )]
    ordered = audience_order(audiences)
    assert [a.name for a in ordered] == ["members", "vip_members"]
    got = memberships(ordered, facts(traits={"tier": "premier"},
                                     identifiers={"member_number": ["M"]}))
    assert got == {"members", "vip_members"}


def test_describe_reads_like_the_rule() -> None:
    text = describe(rule({"all": [{"audience": "members"},
                                  {"event": {"type": "tow", "within": "365d", "min": 2}},
                                  {"not": {"path": "traits.tier", "eq": "plus"}}]}))
    assert text == ("(in audience members and tow at least 2 times in the last 365d "
                    "and not traits.tier eq 'plus')")


def _config(personalization: dict[str, Any]) -> str:
    try:
        parse_config({"personalization": personalization}, "tessera.yaml")
    except ConfigError as exc:
        return str(exc)
    return ""


def test_configuration_errors_name_the_path_and_reason() -> None:
    assert "personalization.computed_traits.0.function" in _config(
        {"computed_traits": [{"name": "x", "function": "median"}]})
    assert "refers to the audience 'nope'" in _config(
        {"audiences": [{"name": "a", "rule": {"audience": "nope"}}]})
    assert "no computed trait 'tows'" in _config(
        {"audiences": [{"name": "a", "rule": {"path": "computed.tows", "gte": 1}}]})
    assert "cycle" in _config({"audiences": [
        {"name": "a", "rule": {"audience": "b"}}, {"name": "b", "rule": {"audience": "a"}}]})
    assert "declared twice" in _config({"audiences": [
        {"name": "a", "rule": {"consent": "x"}}, {"name": "a", "rule": {"consent": "y"}}]})
    assert "channel_caps names channels" in _config({"actions": [
        {"name": "x", "channels": ["email"], "channel_caps": {"sms": [{"max": 1, "per": "1d"}]}}]})
    assert "personalization.actions.0.rank: unknown field" in _config(
        {"actions": [{"name": "x", "channels": ["email"], "rank": 1}]})


def test_consent_is_the_privacy_question_only_true_counts() -> None:
    from tessera.personalization.consent import TraitConsent

    consent = TraitConsent()
    assert consent.granted({"consent.marketing_email": True}, "marketing_email")
    for value in (False, "yes", 1, None):
        assert not consent.granted({"consent.marketing_email": value}, "marketing_email")
    assert not consent.granted({}, "marketing_email")
    other = TraitConsent("optin_")
    assert other.granted({"optin_marketing_email": True}, "marketing_email")
    assert not other.granted({"consent.marketing_email": True}, "marketing_email")


@pytest.mark.parametrize("path", ["traits.tier", "traits.missing", "nothing.here", "list.1",
                                  "list.9", "traits.consent.email", "profile_id", "deep.a.b",
                                  "traits"])
def test_the_fast_path_lookup_answers_as_the_condition_language(path: str) -> None:
    from tessera.activation.expr import get
    from tessera.personalization.rules import _finder

    ctx = {"traits": {"tier": "plus", "consent": {"email": True}}, "list": ["a", "b"],
           "profile_id": "p1", "deep": {"a": {"b": 3}}}
    assert _finder(path)(ctx) is get(ctx, path) or _finder(path)(ctx) == get(ctx, path)
