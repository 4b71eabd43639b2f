"""The analytical warehouse (DuckDB) and SQL-defined traits synced back to profiles."""

from tessera.warehouse.traits import SqlTrait, load_trait_specs
from tessera.warehouse.warehouse import Warehouse

__all__ = ["SqlTrait", "Warehouse", "load_trait_specs"]
