from __future__ import annotations

from pathlib import Path

from tessera.privacy.records.base import TrustRecords
from tessera.privacy.records.sqlite import SQLiteRecords
from tests.privacy.records_contract import RecordsContract


class TestSQLiteRecords(RecordsContract):
    def make_records(self, tmp_path: Path) -> TrustRecords:
        return SQLiteRecords(tmp_path / "trust.db")
