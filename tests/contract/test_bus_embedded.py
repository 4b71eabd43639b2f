from pathlib import Path

from tessera.bus.base import Bus
from tessera.bus.embedded import SQLiteBus
from tests.contract.bus_contract import BusContract


class TestSQLiteBus(BusContract):
    async def make_bus(self, tmp_path: Path) -> Bus:
        return SQLiteBus(tmp_path / "bus.db")
