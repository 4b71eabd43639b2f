from tessera.config import default_config, parse_config
from tessera.identity.extract import IdentifierExtractor


def extractor() -> IdentifierExtractor:
    return IdentifierExtractor(default_config())


def test_email_is_trimmed_and_lower_cased() -> None:
    assert extractor().normalize("email", "  Jane.Doe@Example.COM ") == "jane.doe@example.com"


def test_malformed_email_is_dropped() -> None:
    ex = extractor()
    assert ex.normalize("email", "not-an-email") is None
    assert ex.normalize("email", "jane@localhost") is None


def test_phone_numbers_become_e164() -> None:
    ex = extractor()
    assert ex.normalize("phone", "(415) 555-0134") == "+14155550134"
    assert ex.normalize("phone", "+1 415 555 0134") == "+14155550134"
    assert ex.normalize("phone", "+44 20 7946 0958") == "+442079460958"
    assert ex.normalize("phone", "12") is None


def test_blocked_placeholder_values_are_dropped() -> None:
    ex = extractor()
    for value in ("null", "NULL", " anonymous ", "undefined", "0000000", "0", "", "n/a"):
        assert ex.normalize("user_id", value) is None, value
    assert ex.normalize("phone", "000-000-0000") is None
    assert ex.normalize("user_id", "u-42") == "u-42"


def test_blocked_values_are_configurable() -> None:
    config = parse_config({"identity": {"blocked_values": ["guest"], "blocked_patterns": []}})
    ex = IdentifierExtractor(config)
    assert ex.normalize("user_id", "Guest") is None
    assert ex.normalize("user_id", "null") == "null"


def test_extract_follows_paths_in_priority_order_without_duplicates() -> None:
    found = extractor().extract({"data": {
        "email": "A@x.io", "traits": {"email": "a@x.io", "member_number": "M-1"},
        "userId": 42, "anonymousId": "anon-1", "phone": None,
    }})
    assert found == [("member_number", "M-1"), ("user_id", "42"), ("email", "a@x.io"),
                     ("anonymous_id", "anon-1")]


def test_configured_identifier_paths() -> None:
    config = parse_config({"identity": {"identifiers": [
        {"type": "loyalty_id", "limit": 1, "priority": 5, "paths": ["data.loyalty.id"]}]}})
    found = IdentifierExtractor(config).extract({"data": {"loyalty": {"id": "L9"}}})
    assert found == [("loyalty_id", "L9")]


def test_same_source_and_id_from_two_write_keys_are_two_events() -> None:
    from tessera.events.envelope import Event

    def make(sender: str) -> Event:
        return Event(id="42", source="crm", type="t", time=0.0, received_at=0.0,
                     source_name=sender)

    assert make("crm").uid == make("crm").uid
    assert make("crm").uid != make("web").uid


def test_identifier_with_nul_is_dropped() -> None:
    assert extractor().normalize("user_id", "u\x001") is None


def test_normalizing_a_column_gives_what_normalizing_each_value_gives() -> None:
    """The import normalizes whole columns: the same values, Nones and all, per type."""
    from tessera.config import parse_config

    config = parse_config({"identity": {
        "blocked_values": ["N/A", "none@example.com"], "blocked_patterns": ["^0+$"],
        "identifiers": [{"type": "member_number", "normalize": "lower", "paths": ["m"]}]}})
    ex = IdentifierExtractor(config)
    raws: list[object] = [
        " A@B.com ", "MAILTO:x@y.io", "mailto:", "a b@c.io", "no-at", "@c.io", "a@c", "",
        "   ", "n/a", "None@Example.com", "000", "x\x00y", "é@ü.de", "M123", " m-9 ",
        "x" * 513, 12, 12.0, 12.5, True, None, ["list"], "+1 650 253 0000", "0", "Ab",
    ]
    assert ex._mode["member_number"] == "lower"
    for type_ in ("email", "member_number", "user_id", "phone", "anonymous_id", "unknown"):
        assert ex.normalize_column(type_, raws) == [ex.normalize(type_, r) for r in raws], type_
