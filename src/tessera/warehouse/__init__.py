"""The analytical warehouse (DuckDB) and SQL-defined traits synced back to profiles."""

from tessera.warehouse.warehouse import SqlTrait, Warehouse, load_trait_specs

__all__ = ["SqlTrait", "Warehouse", "load_trait_specs"]
