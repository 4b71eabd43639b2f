from pathlib import Path

from tessera.store.base import Store
from tessera.store.sqlite import SQLiteStore
from tests.contract.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return SQLiteStore(tmp_path / "store.db")
