"""Wires the ports (bus, store), the processors and the API from configuration."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.bus import Bus, open_bus
from tessera.config import TesseraConfig
from tessera.identity.extract import IdentifierExtractor
from tessera.processing.profiles import ProfileProcessor
from tessera.processing.worker import Worker
from tessera.store import Store, open_store

if TYPE_CHECKING:
    from tessera.events.envelope import Event
    from tessera.privacy.encryption import FieldCipher
    from tessera.privacy.principals import Principals
    from tessera.privacy.records import TrustRecords
    from tessera.privacy.suppression import Suppression


class Runtime:
    """Everything one Tessera process needs, built from configuration and URLs.

    The backends are chosen by URL: ``TESSERA_BUS_URL`` / ``TESSERA_STORE_URL``
    (or the config file's ``bus_url`` / ``store_url``), defaulting to SQLite
    files in the data directory.
    """

    def __init__(
        self,
        config: TesseraConfig,
        data_dir: Path,
        bus_url: str | None = None,
        store_url: str | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.bus_url = bus_url or os.environ.get("TESSERA_BUS_URL") or config.bus_url
        self.store_url = store_url or os.environ.get("TESSERA_STORE_URL") or config.store_url
        self.bus: Bus = open_bus(self.bus_url, self.data_dir)
        self.cipher: FieldCipher | None = None
        """Encrypts personal data at rest (``privacy.encryption``); None when no key is given."""
        self.store: Store = self._protect(open_store(self.store_url, self.data_dir))
        self.extractor = IdentifierExtractor(config)
        self.processor = ProfileProcessor(config, self.store)
        self.processor.screen = self._screen
        from tessera.privacy import masking

        masking.declare(config)  # this installation's identifier types and PII fields
        self.write_keys = {s.write_key: s.name for s in config.sources}
        self.api_keys = {k.key: frozenset(k.scopes) for k in config.api_keys}
        self._started = False

    def _protect(self, store: Store) -> Store:
        """Wrap the store so personal data is encrypted at rest, if keys are given.

        A missing or wrong key stops the process here, at start, with an
        :class:`~tessera.privacy.encryption.EncryptionError` naming the key.
        Without keys, the trust records are asked whether stored data needs
        them: here for an embedded installation, in :meth:`start` for
        PostgreSQL (so that a server that is down does not fail construction).
        """
        from tessera.privacy.encryption import check_keys, cipher_from_environment
        from tessera.store.encrypted import EncryptedStore

        self.cipher = cipher_from_environment(self.config)
        self._keys_checked = False
        if self.cipher is not None or (self.data_dir / "trust.db").exists():
            check_keys(self.records, self.cipher, self.config.privacy.encryption.keys_env)
            self._keys_checked = True
        return store if self.cipher is None else EncryptedStore(store, self.cipher)

    async def start(self) -> None:
        if self._started:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._keys_checked and self.store_url and not self.store_url.startswith("sqlite"):
            from tessera.privacy.encryption import check_keys

            await asyncio.to_thread(check_keys, self.records, self.cipher,
                                    self.config.privacy.encryption.keys_env)
            self._keys_checked = True
        await asyncio.to_thread(self.store.migrate)
        await self.bus.start()
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.bus.close()
        self.store.close()
        if "records" in self.__dict__:
            self.records.close()

    @functools.cached_property
    def records(self) -> TrustRecords:
        """Managed keys, the suppression list and the audit log (beside the profiles)."""
        from tessera.privacy.records import open_records

        return open_records(self.store_url, self.data_dir)

    @functools.cached_property
    def principals(self) -> Principals:
        """Who holds a key, and their rate limits (see :mod:`tessera.privacy.principals`)."""
        from tessera.privacy.principals import Principals

        return Principals(self.config.privacy, self.write_keys, self.api_keys, self.records)

    @functools.cached_property
    def suppression(self) -> Suppression:
        """Erased identifiers: screens events at ingest (re-read at most twice a second)."""
        from tessera.privacy.suppression import INGEST_RECHECK_SECONDS, Suppression

        return Suppression(self.records, self.config.privacy.suppression,
                           recheck_seconds=INGEST_RECHECK_SECONDS, fail_open=True)

    @functools.cached_property
    def _processor_suppression(self) -> Suppression:
        from tessera.privacy.suppression import Suppression

        return Suppression(self.records, self.config.privacy.suppression)

    def _screen(self, events: list[Event]) -> list[Event]:
        # the processor re-reads the list's version every batch: an erasure's events
        # still on the bus, or accepted while it ran, never bring the person back
        return self._processor_suppression.screen(events)

    def worker(self) -> Worker:
        return Worker(self.bus, self.store, self.processor, self.config.processor)
