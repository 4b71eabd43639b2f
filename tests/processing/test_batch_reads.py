"""What a batch reads: traits only of the profiles whose events carry traits, the rest
when a merge (or anything else) needs them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tessera.store.base import StoreTx, Trait
from tests.processing.helpers import Harness


class Recording:
    """Wraps a transaction and notes the profile ids whose traits were read."""

    def __init__(self, tx: StoreTx, reads: list[set[str]]) -> None:
        self._tx = tx
        self._reads = reads

    def traits(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Trait]]:
        ids = list(profile_ids)
        self._reads.append(set(ids))
        return self._tx.traits(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def recording(h: Harness) -> list[set[str]]:
    reads: list[set[str]] = []
    original = h.store.transaction

    @contextmanager
    def transaction() -> Iterator[Any]:
        with original() as tx:
            yield Recording(tx, reads)

    h.store.transaction = transaction  # type: ignore[method-assign]
    return reads


def test_events_without_traits_read_no_traits(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(h.event({"email": "ann@example.com", "first_name": "Ann"}))
    pid = h.profile_of("email:ann@example.com").id
    reads = recording(h)
    h.apply(h.event({"email": "ann@example.com"}))
    assert all(pid not in r for r in reads)
    assert h.profile_of("email:ann@example.com").event_count == 2
    h.apply(h.event({"email": "ann@example.com", "last_name": "Lee"}))
    assert any(pid in r for r in reads)
    traits = {n: t.value for n, t in h.profile_of("email:ann@example.com").traits.items()}
    assert traits == {"first_name": "Ann", "last_name": "Lee"}


def test_a_merge_by_an_event_without_traits_keeps_both_profiles_traits(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.apply(
        h.event({"email": "bo@example.com", "first_name": "Bo"}),
        h.event({"user_id": "u-bo", "last_name": "Berg"}),
    )
    assert h.profile_of("email:bo@example.com").id != h.profile_of("user_id:u-bo").id
    # one batch: a plain event of one profile, the event that merges the two (no
    # traits either, so neither profile's traits were read up front), then traits
    h.apply(
        h.event({"email": "bo@example.com"}),
        h.event({"email": "bo@example.com", "user_id": "u-bo"}),
        h.event({"user_id": "u-bo", "preferred_channel": "sms"}),
    )
    merged = h.profile_of("email:bo@example.com")
    assert merged.id == h.profile_of("user_id:u-bo").id
    traits = {n: t.value for n, t in merged.traits.items()}
    assert traits == {"first_name": "Bo", "last_name": "Berg", "preferred_channel": "sms"}
