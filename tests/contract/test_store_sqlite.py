import sqlite3
from pathlib import Path

import pytest

from tessera.store.base import Store
from tessera.store.outbox_pack import MARK, expand
from tessera.store.sqlite import SQLiteStore
from tessera.store.sqlite_columns import COUNTER
from tests.contract.store_contract import ChangeFeedContract, pending, pid, updates


class TestSQLiteStore(ChangeFeedContract):
    def make_store(self, tmp_path: Path) -> Store:
        return SQLiteStore(tmp_path / "store.db")

    def test_erased_values_are_gone_from_the_files(self, tmp_path: Path) -> None:
        """secure_delete and the WAL truncation leave no byte of the person behind."""
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            jane, _, _ = self._person_and_bystander(store)
            assert store.get_profile(jane) is not None
            store.erase(jane)
            files = [p for p in tmp_path.rglob("*") if p.is_file()]
            blob = b"".join(p.read_bytes() for p in files)
            for needle in (b"jane@x.io", b"+15555550199", b"Jane Q", jane.encode()):
                assert needle not in blob, needle
            assert b"bob@x.io" in blob  # the scan does see what is still there
        finally:
            store.close()

    def test_packed_messages_are_kept_as_packed_rows(self, tmp_path: Path) -> None:
        """A thousand messages to a row, with the row's id; deleting it deletes them."""
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            packed = updates([pid() for _ in range(2500)])
            with store.transaction() as tx:
                tx.add_outbox_packed(packed)
            with sqlite3.connect(tmp_path / "store.db") as conn:
                rows = conn.execute("SELECT topic, message_id, key, payload FROM outbox "
                                    "ORDER BY id").fetchall()
            assert [(t, m, k, p) for t, m, k, p in rows] == [
                ("derived", "", "", p) for p in packed.rows]
            assert all(p.startswith(MARK) for p in packed.rows)
            stored = sum(len(p) for *_, p in rows)
            spelled = sum(len(m[1]) + len(m[2]) + len(m[3]) for m in expand(packed))
            assert stored < spelled / 2  # the point of it
            ids = [m.id for m in store.pending_outbox(1)]
            assert len(ids) == 1000 and len(set(ids)) == 1
            store.delete_outbox(ids)
            assert pending(store) == expand(packed)[1000:]
        finally:
            store.close()

    def test_erased_values_in_a_packed_row_are_gone_from_the_files(self, tmp_path: Path) -> None:
        """The packed row rewritten without her record leaves no copy of her id in the
        files (secure_delete overwrites the old row's cells and pages, the WAL truncated)."""
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            jane, jane_old, bob = self._person_and_bystander(store)
            carol = pid()
            with store.transaction() as tx:
                tx.create_profile(carol, 1.0)
                # a row long enough for overflow pages, her records among the others
                tx.add_outbox_packed(updates([bob, jane, *[carol] * 200, jane_old, bob]))
            store.erase(jane)
            blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
            for needle in (jane.encode(), jane_old.encode(), b"jane@x.io"):
                assert needle not in blob, needle
            assert bob.encode() in blob and carol.encode() in blob
            assert [m[2] for m in pending(store)] == [
                bob, *(f"profile_id:{p}" for p in [bob, *[carol] * 200, bob])]
        finally:
            store.close()

    def test_the_row_counter_grows_and_survives_a_rollback(self, tmp_path: Path) -> None:
        """Bulk inserts count their rows from a TEMP table of the connection: grown when a
        larger insert comes, taken back with a rolled-back transaction, never in the file."""
        store = self.make_store(tmp_path)
        store.migrate()

        def batch(n: int, tag: str) -> list[tuple[str, str, str, bytes]]:
            return [("derived", f"{tag}{i}", "k", b"%d" % i) for i in range(n)]

        try:
            with pytest.raises(RuntimeError), store.transaction() as tx:
                tx.add_outbox(batch(3000, "gone"))
                raise RuntimeError("crash before commit")
            expected = batch(300, "a") + batch(2000, "b") + batch(256, "c")
            for part in (expected[:300], expected[300:2300], expected[2300:]):
                with store.transaction() as tx:
                    tx.add_outbox(part)
            assert pending(store) == expected
            with sqlite3.connect(tmp_path / "store.db") as conn:
                assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name=?",
                                    (COUNTER.split(".")[1],)).fetchone() == (0,)
        finally:
            store.close()

    def test_the_generic_trait_values_reads_the_same(self, tmp_path: Path) -> None:
        """The base class's trait_values (a page per transaction through ``StoreTx.traits``),
        which backends without their own bulk read inherit, meets the same contract."""
        store = _GenericTraitValues(tmp_path / "generic.db")
        store.migrate()
        try:
            self.test_trait_values_lists_live_profiles_with_the_wanted_traits(store)
        finally:
            store.close()


class _GenericTraitValues(SQLiteStore):
    trait_values = Store.trait_values
