"""The warehouse: a DuckDB file in the data directory, fed from the store.

``export`` copies the store's projections and the segment memberships into
tables (``profiles``, ``traits``, ``identities``, ``merges``, ``events``,
``segment_memberships``) in one DuckDB transaction, so readers see the
previous export or the new one, never a mix: incrementally (only what changed
since the stored high-water mark, see :mod:`.export`) or as a full refresh.
It writes them as Parquet too (``events`` partitioned by day and type; an
incremental export rewrites only the partitions and files that changed).
``sql`` runs any query; ``sync_traits`` (:mod:`.traits`) writes SQL-defined
traits back to the profiles.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tessera.config import TesseraConfig
from tessera.store.base import Store
from tessera.warehouse.export import (
    DAY,
    MARKED,
    TABLES,
    Changes,
    Memberships,
    full_export,
    incremental_export,
)
from tessera.warehouse.traits import SqlTrait, SyncReport, sync_traits

OVERLAP = 60.0
"""Seconds re-read before the last mark: covers transactions that committed late."""


@dataclass(slots=True)
class ExportReport:
    rows: dict[str, int]
    """Rows each table holds after the export."""
    seconds: float
    parquet_dir: str
    mode: str = "full"
    """``full`` or ``incremental``."""
    written: dict[str, int] = field(default_factory=dict)
    """Rows inserted, updated or deleted per table (a full export: every row)."""


class Warehouse:
    def __init__(self, data_dir: Path) -> None:
        import duckdb

        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "warehouse.duckdb"
        self.parquet_dir = self.dir / "warehouse-parquet"
        self.conn = duckdb.connect(str(self.path))
        self.conn.execute("CREATE TABLE IF NOT EXISTS trait_sync_state (trait VARCHAR, "
                          "profile_id VARCHAR, digest VARCHAR, PRIMARY KEY (trait, profile_id))")
        self.conn.execute("CREATE TABLE IF NOT EXISTS export_marks (table_name VARCHAR "
                          "PRIMARY KEY, mark DOUBLE, exported_at DOUBLE)")

    def close(self) -> None:
        self.conn.close()

    # -- export --------------------------------------------------------------

    def marks(self) -> dict[str, float]:
        """The high-water mark of each table fed by the store's change feed."""
        return dict(self.conn.execute("SELECT table_name, mark FROM export_marks").fetchall())

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}

    def export(self, store: Store, parquet: bool = True, memberships: Memberships | None = None,
               full: bool = False, overlap: float = OVERLAP) -> ExportReport:
        """Bring the warehouse up to date: incrementally when it can, else a full refresh.

        Incremental needs every table and mark of an earlier export and a store
        with a change feed (:meth:`Store.changed_profiles`); otherwise, or with
        ``full``, every table is replaced.
        """
        started = time.monotonic()
        mark = time.time()  # changes committed from here on are the next export's
        marks = self.marks()
        incremental = (not full and all(t in marks for t in MARKED)
                       and set(TABLES) - {"segment_memberships"} <= self._tables())
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS segment_memberships "
                         f"({TABLES['segment_memberships']})")
            changes: Changes | None = None
            if incremental:
                try:
                    changes = incremental_export(conn, store, min(marks.values()) - overlap,
                                                 memberships)
                except NotImplementedError:  # no change feed in this store
                    incremental = False
            if not incremental:
                full_export(conn, store, memberships)
            conn.executemany("INSERT OR REPLACE INTO export_marks VALUES (?, ?, ?)",
                             [(t, mark, time.time()) for t in MARKED])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        rows = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
                for t in TABLES}
        if parquet:
            if changes is None or not self.parquet_dir.exists():
                self.write_parquet()
            else:
                self._update_parquet(changes)
        return ExportReport(rows, time.monotonic() - started, str(self.parquet_dir),
                            "incremental" if changes is not None else "full",
                            changes.written if changes is not None else dict(rows))

    def write_parquet(self) -> None:
        """Every table as Parquet, written beside the old files and swapped in whole."""
        tmp = self.parquet_dir.with_name(self.parquet_dir.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        present = self._tables()
        for table in TABLES:
            if table not in present:
                continue
            if table == "events":
                self.conn.execute(
                    f"COPY (SELECT *, {DAY} AS day FROM events) TO '{tmp / 'events'}' "
                    f"(FORMAT PARQUET, PARTITION_BY (day, type), OVERWRITE_OR_IGNORE)")
            else:
                self.conn.execute(f"COPY {table} TO '{tmp / (table + '.parquet')}' "
                                  f"(FORMAT PARQUET)")
        old = self.parquet_dir.with_name(self.parquet_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.parquet_dir.exists():
            self.parquet_dir.rename(old)
        tmp.rename(self.parquet_dir)
        shutil.rmtree(old, ignore_errors=True)

    def _update_parquet(self, changes: Changes) -> None:
        """Rewrite the files of the tables, and the event partitions, that changed."""
        for table, n in changes.written.items():
            if n and table != "events":
                target = self.parquet_dir / f"{table}.parquet"
                tmp = target.with_suffix(".parquet.new")
                self.conn.execute(f"COPY {table} TO '{tmp}' (FORMAT PARQUET)")
                os.replace(tmp, target)
        if not changes.partitions:
            return
        events = self.parquet_dir / "events"
        tmp = self.parquet_dir / "events.new"
        shutil.rmtree(tmp, ignore_errors=True)
        days = sorted({d for d, _ in changes.partitions})
        self.conn.execute(
            f"COPY (SELECT *, {DAY} AS day FROM events WHERE {DAY} IN (SELECT unnest(?)) "
            f"AND type IN (SELECT unnest(?))) TO '{tmp}' "
            f"(FORMAT PARQUET, PARTITION_BY (day, type), OVERWRITE_OR_IGNORE)",
            [days, sorted({t for _, t in changes.partitions})])
        wanted = {(f"day={d}", t) for d, t in changes.partitions}
        for day_dir in ([events / d for d in {d for d, _ in wanted}]):
            if day_dir.is_dir():  # the partitions that changed go; untouched ones stay
                for type_dir in day_dir.iterdir():
                    if (day_dir.name, unquote(type_dir.name.partition("=")[2])) in wanted:
                        shutil.rmtree(type_dir)
        if tmp.is_dir():
            for day_dir in tmp.iterdir():
                for type_dir in day_dir.iterdir():
                    if (day_dir.name, unquote(type_dir.name.partition("=")[2])) in wanted:
                        dest = events / day_dir.name / type_dir.name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        type_dir.rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        for day_dir in [events / d for d in {d for d, _ in wanted}]:
            if day_dir.is_dir() and not any(day_dir.iterdir()):
                day_dir.rmdir()

    # -- erasure -------------------------------------------------------------

    def erase(self, profile_ids: Sequence[str]) -> int:
        """Remove these profiles' rows from every table and from the Parquet files; how many.

        DuckDB leaves deleted data in the file's free blocks, so the database is
        then copied into a new file that replaces the old one: afterwards no byte
        of the rows remains on disk. The Parquet files are written again.
        """
        ids = list(profile_ids)
        present = {r[0] for r in self.conn.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        removed = 0
        self.conn.execute("BEGIN")
        try:
            for table in [*TABLES, "trait_sync_state"]:
                if table not in present:
                    continue
                where = "profile_id IN (SELECT unnest(?))"
                if table == "merges":
                    where += " OR merged_id IN (SELECT unnest(?))"
                params = [ids, ids] if table == "merges" else [ids]
                row = self.conn.execute(f"SELECT count(*) FROM {table} WHERE {where}",
                                        params).fetchone()
                removed += int(row[0]) if row else 0
                self.conn.execute(f"DELETE FROM {table} WHERE {where}", params)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._rewrite_file()
        if self.parquet_dir.exists():
            self.write_parquet()
        return removed

    def _rewrite_file(self) -> None:
        import duckdb

        fresh = self.path.with_name(self.path.name + ".new")
        fresh.unlink(missing_ok=True)
        row = self.conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        self.conn.execute(f"ATTACH '{fresh}' AS erased_copy")
        self.conn.execute(f'COPY FROM DATABASE "{row[0]}" TO erased_copy')
        self.conn.execute("DETACH erased_copy")
        self.conn.close()
        fresh.replace(self.path)
        Path(str(self.path) + ".wal").unlink(missing_ok=True)
        self.conn = duckdb.connect(str(self.path))

    # -- queries -------------------------------------------------------------

    def sql(self, query: str, limit: int | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = self.conn.execute(query)
        if result.description is None:
            return [], []
        names = [d[0] for d in result.description]
        rows = result.fetchmany(limit) if limit else result.fetchall()
        return names, rows

    # -- SQL traits back to profiles -------------------------------------------

    def sync_traits(self, store: Store, config: TesseraConfig, specs: list[SqlTrait],
                    full: bool = False) -> list[SyncReport]:
        """Compute the SQL traits here and write the changed values to the profiles."""
        return sync_traits(self.conn, store, config, specs, full)
