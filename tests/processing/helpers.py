"""Building events and a processor over a fresh SQLite store for processing tests."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from tessera.config import TesseraConfig, default_config
from tessera.events.envelope import Event
from tessera.identity.extract import IdentifierExtractor
from tessera.processing.profiles import ProfileProcessor
from tessera.store.sqlite import SQLiteStore

_ids = itertools.count()


class Harness:
    def __init__(self, tmp_path: Path, config: TesseraConfig | None = None) -> None:
        self.config = config or default_config()
        self.store = SQLiteStore(tmp_path / "store.db")
        self.store.migrate()
        self.processor = ProfileProcessor(self.config, self.store)
        self.extractor = IdentifierExtractor(self.config)

    def event(self, data: dict[str, Any], type_: str = "com.example.crm.contact.updated",
              source: str = "crm", at: float | None = None, event_id: str | None = None
              ) -> Event:
        now = time.time()
        return Event(
            id=event_id or f"e{next(_ids)}", source=f"test/{source}", type=type_,
            time=now if at is None else at, received_at=now, source_name=source, data=data,
            identifiers=self.extractor.extract({"data": data}),
        )

    def apply(self, *events: Event) -> None:
        self.processor.apply(list(events))

    def profile_of(self, identifier: str) -> Any:
        pid = self.store.resolve(identifier)
        assert pid is not None, f"no profile for {identifier}"
        profile = self.store.get_profile(pid)
        assert profile is not None
        return profile

    def identities(self, identifier: str) -> set[tuple[str, str]]:
        return {(i.type, i.value) for i in self.profile_of(identifier).identities}
