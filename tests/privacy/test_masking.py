"""Personal data is masked in log lines: declared fields, identifiers in text, e-mails, phones."""

from __future__ import annotations

from tessera.config import parse_config
from tessera.privacy import masking


def test_identifiers_emails_and_phones_are_masked_in_any_string() -> None:
    text = masking.mask_text("GET /v1/profiles/email:jane@x.io?x=1 from +1 415 555 0199 "
                             "at 2026-01-02T03:04:05Z took 12.5 ms")
    assert text == "GET /v1/profiles/email:***?x=1 from *** at 2026-01-02T03:04:05Z took 12.5 ms"


def test_declared_fields_are_masked_and_the_rest_kept() -> None:
    config = parse_config({"identity": {"identifiers": [{"type": "member_number"}]},
                           "catalog": {"files": [], "events": [
                               {"type": "com.example.member.changed",
                                "pii": ["data.after.date_of_birth"]}]}})
    masking.declare(config)
    line = masking.mask_pii(None, "info", {
        "event": "worker.dead_lettered", "date_of_birth": "1990-01-01", "count": 3,
        "error": "bad member_number:M-77 in {'email': 'a@b.io'}",
        "nested": {"member_number": "M-77", "ok": "fine"}, "duration_ms": 1.5})
    assert line == {
        "event": "worker.dead_lettered", "date_of_birth": "***", "count": 3,
        "error": "bad member_number:*** in {'email': '***'}",
        "nested": {"member_number": "***", "ok": "fine"}, "duration_ms": 1.5}
