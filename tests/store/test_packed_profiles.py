"""A chunk of new profiles packed for SQLite: written whole, or not at all when the store
contradicts it (tessera.store.sqlite_columns.write_packed)."""

from __future__ import annotations

from pathlib import Path

from tessera.store.base import ProfileColumns
from tessera.store.sqlite import SQLiteStore
from tessera.store.sqlite_columns import pack_new_profiles, write_packed


def columns(first: int, n: int, uid_base: int = 0) -> ProfileColumns:
    ids = [f"prf_{first + i:032x}" for i in range(n)]
    return ProfileColumns(
        source="crm", ids=ids, event_uids=[f"{uid_base + first + i:032x}" for i in range(n)],
        types=["tessera.import.profile"] * n, times=[1.5] * n, received_at=[2.5] * n,
        documents=["{}"] * n, link_rows=[i // 2 for i in range(2 * n)],
        link_types=["email", "member_number"] * n,
        link_values=[v for i in range(n) for v in (f"u{first + i}@x.io", f"M{first + i}")],
        trait_rows=list(range(n)), trait_names=["first_name"] * n,
        trait_values=['"ann"'] * n, trait_priorities=[0] * n)


def write(store: SQLiteStore, cols: ProfileColumns) -> bool:
    packed = pack_new_profiles(cols, 3.0)
    assert packed is not None
    with store.transaction() as tx:
        return write_packed(tx.conn, packed)  # type: ignore[attr-defined]


def test_a_chunk_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    store.migrate()
    try:
        assert write(store, columns(0, 300))
        after = store.counts()
        assert (after["profiles"], after["identities"], after["events_applied"]) == (
            300, 600, 300)
        # the same events again: applied already
        assert not write(store, columns(0, 300, uid_base=0))
        assert store.counts() == after
        # new events, but the last one's member number is known
        known = columns(300, 300, uid_base=10_000)
        known.link_values[-1] = "M5"
        assert not write(store, known)
        assert store.counts() == after
        assert store.resolve("email:u599@x.io") is None
        # and a chunk nobody knows still goes in after a refused one
        assert write(store, columns(600, 300, uid_base=20_000))
        assert store.counts()["profiles"] == 600
    finally:
        store.close()
