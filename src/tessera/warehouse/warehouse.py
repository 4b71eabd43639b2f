"""The warehouse: a DuckDB file in the data directory, fed from the store.

``export`` copies the store's projections into tables (``profiles``,
``traits``, ``identities``, ``merges``, ``events``) in one DuckDB
transaction, so readers see the previous export or the new one, never a mix,
and writes them as Parquet too (``events`` partitioned by day and type).
``sql`` runs any query. ``sync_traits`` computes SQL-defined traits (over the
warehouse tables or external Parquet files via ``read_parquet``) and writes
back to the profiles only the rows whose value changed since the last sync,
with the warehouse as the trait's source and that source's priority.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field

from tessera.config import TesseraConfig
from tessera.events.envelope import Event
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC
from tessera.profiles.survivorship import Survivorship
from tessera.store.base import Store, Trait

TABLES = {
    "profiles": "profile_id VARCHAR, created_at DOUBLE, updated_at DOUBLE, event_count BIGINT",
    "traits": "profile_id VARCHAR, name VARCHAR, value JSON, source VARCHAR, time DOUBLE, "
              "priority INTEGER, event_uid VARCHAR",
    "identities": "profile_id VARCHAR, type VARCHAR, value VARCHAR, event_uid VARCHAR, "
                  "linked_at DOUBLE, source VARCHAR, reason VARCHAR",
    "merges": "profile_id VARCHAR, merged_id VARCHAR, event_uid VARCHAR, merged_at DOUBLE, "
              "reason VARCHAR",
    "events": "profile_id VARCHAR, event_uid VARCHAR, type VARCHAR, source VARCHAR, "
              "time DOUBLE, received_at DOUBLE, event JSON",
}
CHUNK = 2000


class SqlTrait(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    sql: str = Field(min_length=1)
    """A query returning ``profile_id`` and ``value`` columns."""
    source: str = "warehouse"
    """The trait's source name (its survivorship priority applies)."""


def load_trait_specs(path: str | Path) -> list[SqlTrait]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [SqlTrait.model_validate(t) for t in raw.get("traits", [])]


@dataclass(slots=True)
class ExportReport:
    rows: dict[str, int]
    seconds: float
    parquet_dir: str


@dataclass(slots=True)
class SyncReport:
    trait: str
    rows: int
    changed: int
    written: int
    unknown_profiles: int


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

    def close(self) -> None:
        self.conn.close()

    # -- export --------------------------------------------------------------

    def _rows(self, store: Store) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
        ids = list(store.iter_profile_ids())
        for start in range(0, len(ids), CHUNK):
            batch: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
            for pid in ids[start:start + CHUNK]:
                p = store.get_profile(pid)
                if p is None:
                    continue
                batch["profiles"].append((p.id, p.created_at, p.updated_at, p.event_count))
                batch["traits"] += [(p.id, n, orjson.dumps(t.value).decode(), t.source, t.time,
                                     t.priority, t.event_uid) for n, t in p.traits.items()]
                batch["identities"] += [(p.id, i.type, i.value, i.event_uid, i.linked_at,
                                         i.source, i.reason) for i in p.identities]
                batch["merges"] += [(p.id, m.merged, m.event_uid, m.at, m.reason)
                                    for m in p.merged_from]
                before: tuple[float, str] | None = None
                for _ in range(p.event_count // 1000 + 2):
                    page = store.timeline(pid, 1000, before)
                    batch["events"] += [(pid, e.event_uid, e.type, e.source, e.time,
                                         e.received_at, orjson.dumps(e.event).decode())
                                        for e in page]
                    if len(page) < 1000:
                        break
                    before = (page[-1].time, page[-1].event_uid)
            yield from batch.items()

    def export(self, store: Store, parquet: bool = True) -> ExportReport:
        started = time.monotonic()
        counts = dict.fromkeys(TABLES, 0)
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for table, columns in TABLES.items():
                conn.execute(f"CREATE OR REPLACE TABLE {table} ({columns})")
            for table, rows in self._rows(store):
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
                    counts[table] += len(rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if parquet:
            self.write_parquet()
        return ExportReport(counts, time.monotonic() - started, str(self.parquet_dir))

    def write_parquet(self) -> None:
        tmp = self.parquet_dir.with_name(self.parquet_dir.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for table in TABLES:
            if table == "events":
                self.conn.execute(
                    f"COPY (SELECT *, strftime(to_timestamp(time), '%Y-%m-%d') AS day "
                    f"FROM events) TO '{tmp / 'events'}' "
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
        survivorship = Survivorship(config)
        reports = []
        for spec in specs:
            names, rows = self.sql(spec.sql)
            if "profile_id" not in names or "value" not in names:
                raise ValueError(f"trait {spec.name}: the query must return profile_id and value")
            ip, iv = names.index("profile_id"), names.index("value")
            if full:
                self.conn.execute("DELETE FROM trait_sync_state WHERE trait=?", [spec.name])
            known = dict(self.conn.execute(
                "SELECT profile_id, digest FROM trait_sync_state WHERE trait=?",
                [spec.name]).fetchall())
            changed: list[tuple[str, Any, str]] = []
            for row in rows:
                value = _plain(row[iv])
                digest = hashlib.blake2b(orjson.dumps(value), digest_size=8).hexdigest()
                if known.get(str(row[ip])) != digest:
                    changed.append((str(row[ip]), value, digest))
            report = SyncReport(spec.name, len(rows), len(changed), 0, 0)
            now = time.time()
            priority = survivorship.priority(spec.name, spec.source)
            synced: list[tuple[str, str, str]] = []
            for start in range(0, len(changed), CHUNK):
                part = changed[start:start + CHUNK]
                live = {pid: store.resolve(pid) for pid, _, _ in part}
                derived: list[Event] = []
                with store.transaction() as tx:
                    current = tx.traits({p for p in live.values() if p})
                    for pid, value, digest in part:
                        target = live[pid]
                        if target is None:
                            report.unknown_profiles += 1
                            continue
                        uid = f"warehouse:{spec.name}:{target}:{digest}"
                        trait = Trait(value, spec.source, now, priority, uid)
                        old = current.get(target, {}).get(spec.name)
                        if survivorship.wins(trait, old):
                            tx.put_traits(target, {spec.name: trait})
                            report.written += 1
                            derived.append(_updated(target, spec.name, old, value, now, uid))
                        synced.append((spec.name, pid, digest))
                    if derived:
                        tx.add_outbox([(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json())
                                       for d in derived])
            if synced:
                self.conn.executemany("INSERT OR REPLACE INTO trait_sync_state VALUES (?, ?, ?)",
                                      synced)
            reports.append(report)
        return reports


def _plain(value: Any) -> Any:
    """A DuckDB value as JSON-able Python (decimals and dates as numbers and text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | dict):
        return orjson.loads(orjson.dumps(value, default=str))
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _updated(pid: str, name: str, old: Trait | None, value: Any, now: float, uid: str) -> Event:
    return Event(
        id=f"{uid}:profile.updated", source=DERIVED_SOURCE, type="profile.updated", time=now,
        received_at=now, source_name="tessera",
        data={"profile_id": pid, "changed": {name: {"old": None if old is None else old.value,
                                                    "new": value}},
              "caused_by": {"warehouse_trait": name}},
        identifiers=[("profile_id", pid)], subject=pid, datacontenttype="application/json")
