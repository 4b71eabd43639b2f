from pathlib import Path

import orjson

from tessera.config import parse_config
from tests.processing.helpers import Harness


def test_first_event_creates_a_profile(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "jane@example.com", "first_name": "Jane"}))
    assert h.store.counts()["profiles"] == 1
    assert h.profile_of("email:jane@example.com").traits["first_name"].value == "Jane"


def test_event_with_a_known_identifier_joins_the_profile(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "jane@example.com"}))
    h.apply(h.event({"email": "JANE@example.com ", "phone": "415 555 0134"}))
    assert h.store.counts()["profiles"] == 1
    assert h.identities("phone:+14155550134") == {("email", "jane@example.com"),
                                                  ("phone", "+14155550134")}


def test_event_linking_two_profiles_merges_them_with_provenance(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"anonymous_id": "anon-1", "first_name": "Jane"}))
    h.apply(h.event({"user_id": "u-1", "last_name": "Doe"}))
    assert h.store.counts()["profiles"] == 2
    linking = h.event({"anonymous_id": "anon-1", "user_id": "u-1"}, event_id="login-1")
    h.apply(linking)
    assert h.store.counts()["profiles"] == 1
    profile = h.profile_of("anonymous_id:anon-1")
    assert h.store.resolve("user_id:u-1") == profile.id
    assert profile.traits["first_name"].value == "Jane"
    assert profile.traits["last_name"].value == "Doe"
    assert profile.event_count == 3
    assert [m.event_uid for m in profile.merged_from] == [linking.uid]
    merged_away = profile.merged_from[0].merged
    assert h.store.resolve(merged_away) == profile.id
    derived = [orjson.loads(m.payload) for m in h.store.pending_outbox(100)]
    merges = [d for d in derived if d["type"] == "identity.merged"]
    assert len(merges) == 1
    assert merges[0]["data"]["profile_id"] == profile.id
    assert merges[0]["data"]["merged_profile_ids"] == [merged_away]
    assert merges[0]["data"]["caused_by"]["uid"] == linking.uid


def test_conflicting_member_numbers_never_merge(tmp_path: Path) -> None:
    """A family sharing one email: two members, two profiles."""
    h = Harness(tmp_path)
    h.apply(h.event({"member_number": "M-1", "email": "family@example.com"}))
    h.apply(h.event({"member_number": "M-2", "email": "family@example.com",
                     "first_name": "Sam"}))
    assert h.store.counts()["profiles"] == 2
    second = h.profile_of("member_number:M-2")
    assert second.id != h.profile_of("member_number:M-1").id
    # the email stays with the first member; the lower-priority identifier is left out
    assert h.store.resolve("email:family@example.com") == h.profile_of("member_number:M-1").id
    assert h.identities("member_number:M-2") == {("member_number", "M-2")}
    assert second.traits["first_name"].value == "Sam"


def test_limit_blocks_a_merge_that_would_join_two_member_numbers(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"member_number": "M-1", "phone": "+14155550100"}))
    h.apply(h.event({"member_number": "M-2", "email": "b@example.com"}))
    # an event that carries identifiers of both members
    h.apply(h.event({"phone": "+14155550100", "email": "b@example.com"}))
    assert h.store.counts()["profiles"] == 2
    assert h.store.counts()["merges"] == 0


def test_user_id_limit_of_one(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"user_id": "u-1", "email": "x@example.com"}))
    h.apply(h.event({"user_id": "u-2", "email": "x@example.com"}))
    assert h.profile_of("user_id:u-1").id != h.profile_of("user_id:u-2").id


def test_blocked_values_never_link_people(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"user_id": "null", "email": "a@example.com"}))
    h.apply(h.event({"user_id": "null", "email": "b@example.com"}))
    h.apply(h.event({"anonymous_id": "anonymous", "phone": "000-000-0000",
                     "email": "c@example.com"}))
    assert h.store.counts()["profiles"] == 3
    assert h.store.resolve("user_id:null") is None
    assert h.store.resolve("anonymous_id:anonymous") is None


def test_event_without_identifiers_changes_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    result = h.processor.apply([h.event({"first_name": "Nobody"})])
    assert result.unattributed == 1
    assert h.store.counts()["profiles"] == 0


def test_applying_the_same_event_twice_has_one_effect(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    event = h.event({"email": "once@example.com"})
    h.apply(event)
    result = h.processor.apply([event, event])
    assert result.applied == 0 and result.duplicates == 2
    assert h.profile_of("email:once@example.com").event_count == 1


def test_three_way_merge_in_one_event(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "a@example.com"}), h.event({"phone": "+14155550101"}),
            h.event({"anonymous_id": "anon-9"}))
    h.apply(h.event({"email": "a@example.com", "phone": "+14155550101",
                     "anonymous_id": "anon-9"}))
    assert h.store.counts()["profiles"] == 1
    assert len(h.profile_of("email:a@example.com").merged_from) == 2


def test_alias_previous_id_joins_the_known_identity(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"anonymousId": "anon-5"}, source="web"))
    alias = h.event({"userId": "u-5"}, source="web")
    alias.identifiers.append(("previous_id", "anon-5"))
    h.apply(alias)
    assert h.store.resolve("user_id:u-5") == h.store.resolve("anonymous_id:anon-5")


def test_priority_order_decides_which_profile_an_event_joins(tmp_path: Path) -> None:
    config = parse_config({"identity": {"identifiers": [
        {"type": "member_number", "limit": 1, "priority": 1, "paths": ["data.member_number"]},
    ]}})
    h = Harness(tmp_path, config)
    h.apply(h.event({"member_number": "M-7", "email": "shared@example.com"}))
    h.apply(h.event({"member_number": "M-8"}))
    event = h.event({"member_number": "M-8", "email": "shared@example.com",
                     "traits": {"first_name": "Al"}})
    h.apply(event)
    assert h.profile_of("member_number:M-8").traits["first_name"].value == "Al"
    assert "first_name" not in h.profile_of("member_number:M-7").traits
