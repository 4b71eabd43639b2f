from pathlib import Path

from tessera.store.base import Store
from tessera.store.sqlite import SQLiteStore
from tests.contract.store_contract import ChangeFeedContract


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
