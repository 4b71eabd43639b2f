"""SQL-defined traits computed in the warehouse and synced back to the profiles.

Each sync keeps a digest per (trait, profile) in the warehouse; only rows whose
value changed since the last sync are written, each as a trait whose source is
the spec's ``source`` (its survivorship priority applies), with a
``profile.updated`` derived event. The profiles written are touched
(``updated_at``), so the next incremental export carries the new values.
"""

from __future__ import annotations

import hashlib
import time
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
class SyncReport:
    trait: str
    rows: int
    changed: int
    written: int
    unknown_profiles: int


def sync_traits(conn: Any, store: Store, config: TesseraConfig, specs: list[SqlTrait],
                full: bool = False) -> list[SyncReport]:
    """Run each spec's query on ``conn`` (DuckDB) and write the changed values to ``store``."""
    survivorship = Survivorship(config)
    reports = []
    for spec in specs:
        result = conn.execute(spec.sql)
        names = [d[0] for d in result.description or []]
        rows = result.fetchall()
        if "profile_id" not in names or "value" not in names:
            raise ValueError(f"trait {spec.name}: the query must return profile_id and value")
        ip, iv = names.index("profile_id"), names.index("value")
        if full:
            conn.execute("DELETE FROM trait_sync_state WHERE trait=?", [spec.name])
        known = dict(conn.execute(
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
                written: list[str] = []
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
                        written.append(target)
                        derived.append(_updated(target, spec.name, old, value, now, uid))
                    synced.append((spec.name, pid, digest))
                if written:
                    tx.touch(sorted(set(written)), now)
                    report.written += len(written)
                if derived:
                    tx.add_outbox([(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json())
                                   for d in derived])
        if synced:
            conn.executemany("INSERT OR REPLACE INTO trait_sync_state VALUES (?, ?, ?)", synced)
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
