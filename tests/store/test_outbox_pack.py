"""Packed outbox messages (:mod:`tessera.store.outbox_pack`): the format on its own.

The stores' side (rows written, read, deleted and erased) is in the store contract;
here, that a packed row spells out exactly the messages its template describes.
"""

from __future__ import annotations

import pickle

import orjson
import pytest

from tessera.personalization.state.outbox import MARK as SEGMENT_MARK
from tessera.store.outbox_pack import (
    MARK,
    PACK,
    PackedMessages,
    Template,
    expand,
    messages,
    pack_records,
    split_row,
)

TEMPLATE = Template(
    "derived", (0, ":profile.updated"), ("profile_id:", 1),
    ('{"id":"', 0, '","data":{"profile_id":"', 1, '","changed":', 2,
     '},"note":"{0} {} %s \\n é"', ',"subject":"', 1, '"}'))
"""Fields out of order and repeated; constant text with braces, a percent, an escape."""


def record(k: int) -> str:
    changed = orjson.dumps({"name": {"old": None, "new": f"Zoë {{{k}}} \n\x1b 🙂"}}).decode()
    return f"{k:032x}\x1fprf_{k:024x}\x1f{changed}"


def test_messages_are_the_template_filled_in_order() -> None:
    recs = [record(k) for k in range(2 * PACK + 17)]
    packed = PackedMessages.build(TEMPLATE, recs)
    assert packed.count == len(recs)
    assert expand(packed) == [TEMPLATE.fill(r.split("\x1f")) for r in recs]
    first = expand(packed)[0]
    assert first[:3] == ("derived", f"{0:032x}:profile.updated", f"profile_id:prf_{0:024x}")
    assert orjson.loads(first[3])["note"] == "{0} {} %s \n é"


def test_rows_hold_up_to_a_thousand_records_behind_the_mark_and_template() -> None:
    packed = PackedMessages.build(TEMPLATE, [record(k) for k in range(2 * PACK + 17)])
    assert [len(messages(row)) for row in packed.rows] == [PACK, PACK, 17]
    for row in packed.rows:
        assert row.startswith(MARK)
        head, recs = split_row(row)
        assert orjson.loads(head[len(MARK):]) == {
            "topic": "derived", "id": [0, ":profile.updated"], "key": ["profile_id:", 1],
            "payload": list(TEMPLATE.payload)}
        assert pack_records(head, recs) == row


def test_a_payload_without_the_mark_is_one_ordinary_message() -> None:
    assert messages(b'{"a":1}', "derived", "m1", "k") == [("derived", "m1", "k", b'{"a":1}')]
    assert messages(SEGMENT_MARK + b"[]", "derived") == [("derived", "", "", SEGMENT_MARK + b"[]")]
    assert MARK != SEGMENT_MARK and not MARK.startswith(SEGMENT_MARK)


@pytest.mark.parametrize("bad", [
    ["a\x1fb", "c", "d"],  # a unit separator inside a field
    ["a", "b\x1ec", "d"],  # a record separator inside a field
])
def test_separators_inside_a_field_are_refused(bad: list[str]) -> None:
    good = [record(k) for k in range(5)]
    with pytest.raises(ValueError, match="separator"):
        PackedMessages.build(TEMPLATE, [*good, "\x1f".join(bad), *good])


def test_records_with_the_wrong_number_of_fields_are_refused() -> None:
    """Also when one short of a field and one with a separator too many balance out."""
    for recs in (["a\x1fb"], ["a\x1fb\x1fc\x1fd"], ["a\x1fb", "a\x1fb\x1fc\x1fd"],
                 [record(1), "a\x1fb\x1fc\x1fd", "a\x1fb"]):
        with pytest.raises(ValueError, match="fields"):
            PackedMessages.build(TEMPLATE, recs)
    with pytest.raises(ValueError, match="fields"):  # the long run and the short in one row
        PackedMessages.build(TEMPLATE, [record(k) for k in range(PACK - 1)]
                             + ["a\x1fb\x1fc\x1fd", "a\x1fb"])


def test_text_that_is_not_utf_8_is_refused() -> None:
    with pytest.raises(ValueError):
        PackedMessages.build(TEMPLATE, ["a\x1fb\x1f\ud800"])


def test_a_template_without_fields_and_no_records() -> None:
    constant = Template("derived", ("id",), (), ('{"ping":true}',))
    assert constant.fields == 1
    assert expand(PackedMessages.build(constant, ["", ""])) == [
        ("derived", "id", "", b'{"ping":true}')] * 2
    empty = PackedMessages.build(TEMPLATE, [])
    assert (empty.rows, empty.count, expand(empty)) == ([], 0, [])


def test_templates_take_text_and_field_indexes_only() -> None:
    for parts in ((True,), (-1,), (1.5,), (b"x",)):
        with pytest.raises((TypeError, ValueError)):
            Template("derived", (), (), parts)  # type: ignore[arg-type]
    assert Template("t", [0], ["k"], [1]).payload == (1,)  # type: ignore[arg-type]
    assert Template("t", (0,), (), (3,)).fields == 4


def test_both_pickle() -> None:
    """The import builds them in another process."""
    packed = PackedMessages.build(TEMPLATE, [record(k) for k in range(3)])
    again = pickle.loads(pickle.dumps(packed))
    assert again == packed and again.template == TEMPLATE and expand(again) == expand(packed)
