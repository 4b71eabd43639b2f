from pathlib import Path

from tessera.config import default_config, parse_config
from tests.processing.helpers import Harness

T0 = 1_700_000_000.0


def test_latest_event_time_wins(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Paris"}}, at=T0))
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Lyon"}}, at=T0 + 60))
    trait = h.profile_of("email:a@example.com").traits["city"]
    assert trait.value == "Lyon"
    assert trait.time == T0 + 60
    assert trait.source == "crm"


def test_late_older_event_does_not_overwrite_newer_value(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Lyon"}}, at=T0 + 60))
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Paris"}}, at=T0))
    profile = h.profile_of("email:a@example.com")
    assert profile.traits["city"].value == "Lyon"
    assert profile.event_count == 2  # the late event is still on the timeline


def test_per_trait_source_priority_beats_time(tmp_path: Path) -> None:
    # the demo config: membership owns the address
    h = Harness(tmp_path, default_config())
    h.apply(h.event({"member_number": "M-1", "address": "1 Main St"}, at=T0,
                    type_="com.example.membership.member.address_changed", source="membership"))
    h.apply(h.event({"member_number": "M-1", "traits": {"address": "9 Elm St"}}, at=T0 + 999,
                    type_="com.example.web.profile_edited", source="web"))
    assert h.profile_of("member_number:M-1").traits["address"].value == "1 Main St"


def test_global_source_priority(tmp_path: Path) -> None:
    config = parse_config({"sources": [{"name": "crm", "write_key": "wk_crm_1234"},
                                       {"name": "web", "write_key": "wk_web_1234"}],
                           "traits": {"source_priority": ["crm"]}})
    h = Harness(tmp_path, config)
    h.apply(h.event({"email": "a@example.com", "traits": {"tier": "gold"}}, at=T0, source="crm"))
    h.apply(h.event({"email": "a@example.com", "traits": {"tier": "basic"}}, at=T0 + 5,
                    source="web"))
    assert h.profile_of("email:a@example.com").traits["tier"].value == "gold"


def test_merge_keeps_the_newest_value_of_each_trait(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Old"}}, at=T0 + 10))
    h.apply(h.event({"email": "a@example.com", "traits": {"tier": "new"}}, at=T0 + 25))
    h.apply(h.event({"user_id": "u-1", "traits": {"city": "New", "tier": "old"}},
                    at=T0 + 20))
    h.apply(h.event({"email": "a@example.com", "user_id": "u-1"}, at=T0 + 30))
    traits = h.profile_of("user_id:u-1").traits
    assert traits["city"].value == "New"
    assert traits["tier"].value == "new"


def test_trait_change_emits_profile_updated_with_only_changes(tmp_path: Path) -> None:
    import orjson

    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Paris", "tier": "gold"}}))
    h.apply(h.event({"email": "a@example.com", "traits": {"city": "Lyon", "tier": "gold"}}))
    updates = [orjson.loads(m.payload) for m in h.store.pending_outbox(100)]
    updates = [u for u in updates if u["type"] == "profile.updated"]
    assert len(updates) == 2
    assert updates[1]["data"]["changed"] == {"city": {"old": "Paris", "new": "Lyon"}}


def test_nul_characters_are_removed_from_trait_values(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com", "traits": {"note": "a\x00b", "x": ["c\x00"]}}))
    traits = h.profile_of("email:a@example.com").traits
    assert traits["note"].value == "ab"
    assert traits["x"].value == ["c"]
