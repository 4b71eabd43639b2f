"""Next best action: eligibility, consent, validity, suppression, caps, scoring, the top N."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from tessera.personalization.model import ModelScoring, PersonalizationConfig
from tessera.personalization.nba import DecisionEngine, Scorer
from tessera.personalization.rules import Facts
from tessera.personalization.state.base import OfferRecord

NOW = 1_800_000_000.0
DAY = 86400.0


def engine(actions: list[dict[str, Any]], **extra: Any) -> DecisionEngine:
    config = PersonalizationConfig.model_validate(
        {"audiences": [{"name": "towed", "rule": {"path": "computed.tows", "gte": 2}}],
         "computed_traits": [{"name": "tows", "function": "count"},
                             {"name": "spend", "function": "sum", "value": "data.total"}],
         "actions": actions, **extra}, strict=False)
    return DecisionEngine(config)


def facts(consent: bool = True, tows: int = 2, spend: float = 0.0,
          tier: str = "classic") -> Facts:
    return Facts(profile_id="p1", traits={"tier": tier}, computed={"tows": tows, "spend": spend},
                 audiences={"towed"} if tows >= 2 else set(),
                 consent=lambda purpose: consent and purpose == "marketing_email")


def presented(action: str, days_ago: float, channel: str = "contact_center",
              outcome: str = "presented") -> OfferRecord:
    return OfferRecord("p1", f"{action}-{days_ago}-{outcome}", action, channel, outcome,
                       NOW - days_ago * DAY)


UPGRADE = {"name": "upgrade", "channels": ["contact_center", "email"],
           "eligibility": {"all": [{"audience": "towed"},
                                   {"not": {"path": "traits.tier", "eq": "plus"}}]},
           "requires_consent": ["marketing_email"], "priority": 50}


def test_an_eligible_action_comes_with_its_reasons() -> None:
    decision = engine([UPGRADE]).decide(facts(), [], "contact_center", 3, NOW)
    assert [c.action for c in decision.chosen] == ["upgrade"]
    reasons = decision.chosen[0].reasons
    assert "consent to marketing_email granted" in reasons
    assert "eligible: (in audience towed and not traits.tier eq 'plus')" in reasons
    assert "priority 50" in reasons


@pytest.mark.parametrize(("kwargs", "channel", "stage", "reason"), [
    ({"consent": False}, "contact_center", "consent", "no consent to marketing_email"),
    ({"tows": 1}, "contact_center", "eligibility", "rule not met"),
    ({"tier": "plus"}, "contact_center", "eligibility", "rule not met"),
    ({}, "sms", "channel", "not offered on sms"),
])
def test_ineligible_actions_say_at_which_stage_and_why(kwargs: dict[str, Any], channel: str,
                                                       stage: str, reason: str) -> None:
    decision = engine([UPGRADE]).decide(facts(**kwargs), [], channel, 3, NOW)
    assert decision.chosen == []
    assert [(r.action, r.stage) for r in decision.rejected] == [("upgrade", stage)]
    assert reason in decision.rejected[0].reason


def test_validity_dates() -> None:
    later = {**UPGRADE, "valid_from": "2030-01-01T00:00:00Z"}
    over = {**UPGRADE, "name": "over", "valid_until": "2020-01-01T00:00:00Z"}
    decision = engine([later, over]).decide(facts(), [], "email", 3, NOW)
    assert {(r.action, r.stage) for r in decision.rejected} == {("upgrade", "validity"),
                                                                ("over", "validity")}


def test_cooldown_caps_and_suppression_from_the_offer_history() -> None:
    capped = {**UPGRADE, "cooldown": "1d", "caps": [{"max": 2, "per": "30d"}],
              "decline_cooldown": "30d"}
    e = engine([capped])
    ok = e.decide(facts(), [presented("upgrade", 2)], "contact_center", 3, NOW)
    assert [c.action for c in ok.chosen] == ["upgrade"]
    assert "within cap: this action presented 1 time in 30d (at most 2)" in ok.chosen[0].reasons

    cases = [
        ([presented("upgrade", 0.5)], "cooldown"),
        ([presented("upgrade", 2), presented("upgrade", 10)], "frequency cap: this action"),
        ([presented("upgrade", 5, outcome="declined")], "declined"),
    ]
    for history, reason in cases:
        decision = e.decide(facts(), history, "contact_center", 3, NOW)
        assert decision.chosen == [], reason
        assert decision.rejected[0].stage == "cap" and reason in decision.rejected[0].reason
    # old presentations no longer count
    assert e.decide(facts(), [presented("upgrade", 40), presented("upgrade", 50)],
                    "contact_center", 3, NOW).chosen
    accepted = e.decide(facts(), [presented("upgrade", 100, outcome="accepted")],
                        "contact_center", 3, NOW)
    assert accepted.rejected[0].stage == "suppressed"


def test_per_channel_caps_of_an_action_and_of_a_channel() -> None:
    a = {**UPGRADE, "channel_caps": {"email": [{"max": 1, "per": "7d"}]}}
    b = {"name": "survey", "channels": ["contact_center", "email"], "priority": 1}
    e = engine([a, b], channel_caps={"contact_center": [{"max": 2, "per": "1d"}]})
    history = [presented("upgrade", 1, channel="email")]
    assert [c.action for c in e.decide(facts(), history, "email", 3, NOW).chosen] == ["survey"]
    assert [c.action for c in e.decide(facts(), history, "contact_center", 3, NOW).chosen] == [
        "upgrade", "survey"]
    busy = [presented("survey", 0.1), presented("other", 0.2)]
    decision = e.decide(facts(), busy, "contact_center", 3, NOW)
    assert decision.chosen == []
    assert all("all actions on contact_center presented 2 times" in r.reason
               for r in decision.rejected)


def test_scoring_ranks_and_the_top_n_is_kept() -> None:
    actions = [
        {**UPGRADE, "weights": [{"when": {"path": "computed.tows", "gte": 3}, "add": 30,
                                 "reason": "three tows"}]},
        {"name": "insurance", "channels": ["contact_center"], "priority": 60},
        {"name": "survey", "channels": ["contact_center"], "priority": 1},
    ]
    e = engine(actions)
    two = e.decide(facts(tows=2), [], "contact_center", 2, NOW)
    assert [c.action for c in two.chosen] == ["insurance", "upgrade"]
    assert two.ranked_out == ["survey"]
    three = e.decide(facts(tows=3), [], "contact_center", 2, NOW)
    assert [(c.action, c.score) for c in three.chosen] == [("upgrade", 80.0), ("insurance", 60.0)]
    assert "+30: three tows" in three.chosen[0].reasons


def test_a_scikit_learn_pipeline_adds_its_probability(tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    assert sklearn
    # trained offline: many tows and high spend accept the upgrade
    X = [[t, s] for t in range(6) for s in (0.0, 500.0, 5000.0)]
    y = [int(t >= 3 and s >= 500.0) for t, s in X]
    pipeline = make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, y)
    path = tmp_path / "upgrade.pkl"
    path.write_bytes(pickle.dumps(pipeline))
    spec = ModelScoring(path=str(path), features=["computed.tows", "computed.spend"],
                        weight=100.0)
    action = {**UPGRADE, "model": spec.model_dump()}
    e = engine([action])
    e.scorers = {"upgrade": Scorer.load(spec)}
    low = e.decide(facts(tows=2, spend=0.0), [], "contact_center", 1, NOW).chosen[0]
    high = e.decide(facts(tows=5, spend=5000.0), [], "contact_center", 1, NOW).chosen[0]
    assert high.score > low.score + 50
    assert any(r.startswith("+") and "model upgrade.pkl predicts" in r for r in high.reasons)
    # a missing feature is NaN, which the pipeline's imputer fills in
    assert Scorer.load(spec).features({"computed": {"tows": 1}}) == [1.0, pytest.approx(
        float("nan"), nan_ok=True)]
