"""Batch imports: CSV, JSONL and Parquet files of profile records or events.

Rows are read as a stream, mapped to events (the same envelope real-time
ingest produces) and applied through the same identity resolution and
survivorship, with the import's source and its priority. See ``docs/batch.md``.
"""

from tessera.imports.job import ImportJob, ImportSummary
from tessera.imports.mapping import ImportMapping, load_mapping

__all__ = ["ImportJob", "ImportMapping", "ImportSummary", "load_mapping"]
