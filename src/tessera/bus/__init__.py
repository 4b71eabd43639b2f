"""The event bus port: one contract (:mod:`tessera.bus.base`), one module per backend."""

from __future__ import annotations

from pathlib import Path

from tessera.bus.base import Bus, BusUnavailable, DeadLetter, Delivery, Message

__all__ = ["Bus", "BusUnavailable", "DeadLetter", "Delivery", "Message", "open_bus"]


def open_bus(url: str | None, data_dir: Path) -> Bus:
    """Choose the backend by URL: ``sqlite:///path`` (default) or ``nats://host:port``."""
    if not url or url.startswith("sqlite:"):
        from tessera.bus.embedded import SQLiteBus

        path = Path(url.removeprefix("sqlite://")) if url else data_dir / "bus.db"
        return SQLiteBus(path)
    if url.startswith(("nats://", "tls://")):
        from tessera.bus.nats import NatsBus

        return NatsBus(url)
    raise ValueError(f"unsupported bus URL {url!r}: use sqlite:///PATH or nats://HOST:PORT")
