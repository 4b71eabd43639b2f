"""The activation processor: every subscription's runner and the journey engine, in one task.

It runs inside ``tessera worker`` next to the profiles processor. Every
``refresh`` seconds it picks up subscriptions created or deleted through the
API and pause flags set by the API or the CLI (they live in the activation
state beside the store: ``activation.db`` in the data directory, or tables in
the store's PostgreSQL, shared by every process on every host). A subscription
starts reading where its ``start`` says: from its creation time (``now``) or
from the beginning of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from tessera.activation.delivery import Limiter, Profiles, SubscriptionRunner, group_name
from tessera.activation.destinations import Sender, build_sender
from tessera.activation.model import (
    FileDestination,
    PythonDestination,
    SubscriptionConfig,
    WebhookDestination,
)
from tessera.activation.state import ActivationState, SubscriptionState, open_activation_state
from tessera.bus.base import Bus
from tessera.catalog.registry import Catalog
from tessera.catalog.resolver import Resolver
from tessera.config import TesseraConfig
from tessera.journeys.engine import JourneyEngine, action_subscriptions
from tessera.journeys.state import JourneyState, open_journey_state
from tessera.store.base import Store

log = structlog.get_logger("tessera.activation")

DestinationConfig = WebhookDestination | PythonDestination | FileDestination


class UnknownDestination(ValueError):
    pass


def configured_subscriptions(config: TesseraConfig) -> dict[str, tuple[SubscriptionConfig, str]]:
    """Subscriptions of the configuration file and of journeys' ``call`` actions."""
    out: dict[str, tuple[SubscriptionConfig, str]] = {}
    for sub in config.subscriptions:
        out[sub.name] = (sub, "config")
    for sub in action_subscriptions(config.journeys):
        out[sub.name] = (sub, "journey")
    return out


def resolve_destination(config: TesseraConfig, sub: SubscriptionConfig) -> DestinationConfig:
    if isinstance(sub.destination, str):
        found = config.destinations.get(sub.destination)
        if found is None:
            known = ", ".join(sorted(config.destinations)) or "none"
            raise UnknownDestination(
                f"subscription {sub.name!r}: no destination named {sub.destination!r} "
                f"(configured: {known})")
        return found
    return sub.destination


@dataclass(slots=True)
class Running:
    sub: SubscriptionConfig
    created_at: float
    runner: SubscriptionRunner
    task: asyncio.Task[None]
    own_sender: Sender | None


class ActivationService:
    def __init__(
        self,
        config: TesseraConfig,
        bus: Bus,
        store: Store,
        data_dir: Path,
        *,
        state: ActivationState | None = None,
        journey_state: JourneyState | None = None,
        store_url: str | None = None,
        max_in_flight: int = 1000,
        refresh_seconds: float = 0.5,
        profile_wait_seconds: float = 10.0,
        tick: float = 0.1,
    ) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.data_dir = Path(data_dir)
        self.state = state or open_activation_state(store_url, self.data_dir)
        self.max_in_flight = max_in_flight
        self.refresh_seconds = refresh_seconds
        self.profiles = Profiles(store, profile_wait_seconds)
        self.engine: JourneyEngine | None = None
        if config.journeys:
            self.journey_state = journey_state or open_journey_state(store_url, self.data_dir)
            self.engine = JourneyEngine(config.journeys, bus, store, self.journey_state,
                                        self.profiles, tick=tick)
        # fat delivery of notification events: the catalog's claim-check resolvers
        self.resolver: Resolver | None = None
        if config.catalog is not None:
            catalog = Catalog(config.catalog)
            if any(spec.resolver is not None for spec in catalog.events):
                self.resolver = Resolver(catalog)
        self.running: dict[str, Running] = {}
        self.errors: dict[str, str] = {}
        self._shared: dict[str, tuple[Sender, Limiter]] = {}
        self._seen_created: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._engine_task: asyncio.Task[None] | None = None

    @classmethod
    def from_runtime(cls, runtime: Any, **kwargs: Any) -> ActivationService:
        """The state follows the runtime's store: its PostgreSQL, or its data directory."""
        kwargs.setdefault("store_url", runtime.store_url)
        return cls(runtime.config, runtime.bus, runtime.store, runtime.data_dir, **kwargs)

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        await asyncio.to_thread(self.state.migrate)
        if self.engine is not None:
            await asyncio.to_thread(self.journey_state.migrate)
        await self.refresh()
        if self.engine is not None and self._engine_task is None:
            self._engine_task = asyncio.create_task(self.engine.run())

    async def run(self) -> None:
        await self.start()
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.refresh_seconds)
                if not self._stop.is_set():
                    try:
                        await self.refresh()
                    except Exception as exc:
                        log.error("activation.refresh_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            await self.close()

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self._engine_task is not None:
            await asyncio.gather(self._engine_task, return_exceptions=True)
            self._engine_task = None
        for name in list(self.running):
            await self._stop_runner(name)
        for sender, _ in self._shared.values():
            await sender.close()
        self._shared.clear()
        if self.resolver is not None:
            await self.resolver.aclose()

    # -- subscriptions ----------------------------------------------------------------

    def desired(self) -> dict[str, tuple[SubscriptionConfig, str]]:
        out = {s.name: (s, "api") for s in self.state.api_subscriptions()}
        out.update(configured_subscriptions(self.config))
        return out

    async def refresh(self) -> None:
        desired = await asyncio.to_thread(self.desired)
        for name in list(self.running):
            if name not in desired or desired[name][0] != self.running[name].sub:
                await self._stop_runner(name)
        paused = await asyncio.to_thread(self.state.paused)
        for name, (sub, origin) in desired.items():
            if name not in self.running:
                try:
                    await self._start_runner(sub, origin)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if self.errors.get(name) != error:
                        log.error("subscription.cannot_start", subscription=name, error=error)
                        self.errors[name] = error
                        await asyncio.to_thread(self.state.add_stats, name, 0, 0, 0, 0, 0,
                                                error, time.time(), None)
                    continue
                self.errors.pop(name, None)
            running = self.running.get(name)
            if running is not None:
                running.runner.paused = name in paused

    async def _initialize(self, sub: SubscriptionConfig, state: SubscriptionState) -> None:
        """Position a new consumer group where the subscription starts."""
        since = 0.0 if sub.start == "beginning" else state.created_at
        for topic in sub.topics:
            await self.bus.reset(topic, group_name(sub.name), since)
        await asyncio.to_thread(self.state.mark_initialized, sub.name)

    async def _start_runner(self, sub: SubscriptionConfig, origin: str) -> None:
        if origin == "api":
            state = await asyncio.to_thread(self.state.get, sub.name)
        else:
            state = await asyncio.to_thread(self.state.ensure, sub, origin)
        if state is None:
            return  # deleted meanwhile
        seen = self._seen_created.get(sub.name)
        if not state.initialized or (seen is not None and seen != state.created_at):
            await self._initialize(sub, state)
        self._seen_created[sub.name] = state.created_at
        destination = resolve_destination(self.config, sub)
        own: Sender | None = None
        if isinstance(sub.destination, str):
            if sub.destination not in self._shared:
                self._shared[sub.destination] = (build_sender(destination, self.data_dir),
                                                 Limiter(destination))
            sender, limiter = self._shared[sub.destination]
        else:
            sender = own = build_sender(destination, self.data_dir)
            limiter = Limiter(destination)
        runner = SubscriptionRunner(sub, bus=self.bus, profiles=self.profiles, state=self.state,
                                    sender=sender, limiter=limiter,
                                    max_in_flight=self.max_in_flight, resolver=self.resolver)
        runner.paused = state.paused
        task = asyncio.create_task(runner.run(), name=f"subscription {sub.name}")
        self.running[sub.name] = Running(sub, state.created_at, runner, task, own)

    async def _stop_runner(self, name: str) -> None:
        running = self.running.pop(name)
        running.runner.stop()
        await asyncio.gather(running.task, return_exceptions=True)
        if running.own_sender is not None:
            await running.own_sender.close()

    # -- for tests and the demo ------------------------------------------------------------

    async def lag(self) -> int:
        total = 0
        for name, running in self.running.items():
            for topic in running.sub.topics:
                total += await self.bus.lag(topic, group_name(name))
        return total

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every subscription has acknowledged everything (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = any(not r.runner.idle() for r in self.running.values())
            if not busy and await self.lag() == 0:
                return True
            await asyncio.sleep(0.02)
        return False


def mask(secret: str | None) -> str | None:
    if not secret:
        return secret
    return secret[:6] + "…" + secret[-4:] if len(secret) > 12 else "…"


def describe(sub: SubscriptionConfig, origin: str) -> dict[str, Any]:
    body = sub.model_dump(mode="json", by_alias=True, exclude_none=True)
    dest = body.get("destination")
    if isinstance(dest, dict) and dest.get("secret"):
        dest["secret"] = mask(dest["secret"])
    body["origin"] = origin
    return body


async def overview(
    config: TesseraConfig, bus: Bus, state: ActivationState, name: str | None = None
) -> list[dict[str, Any]]:
    """Every subscription with its definition, pause flag and delivery figures."""
    rows = {s.name: s for s in await asyncio.to_thread(state.all)}
    subs: dict[str, tuple[SubscriptionConfig, str]] = {}
    for stored in rows.values():  # as last seen by a worker (its configuration may differ)
        if stored.definition is not None:
            with contextlib.suppress(ValueError):
                subs[stored.name] = (
                    SubscriptionConfig.model_validate(stored.definition, strict=False),
                    stored.origin)
    subs.update(configured_subscriptions(config))
    out = []
    for sub_name in sorted(subs):
        if name is not None and sub_name != name:
            continue
        sub, origin = subs[sub_name]
        row = rows.get(sub_name)
        group = group_name(sub_name)
        lag: int | None = None
        if row is not None and row.initialized:
            lag = 0
            for topic in sub.topics:
                lag += await bus.lag(topic, group)
        dead = len(await bus.dead_letters(group))
        body = describe(sub, origin)
        body.update({
            "group": group,
            "paused": bool(row and row.paused),
            "created_at": row.created_at if row else None,
            "stats": {
                "lag": lag,
                "in_flight": row.in_flight if row else 0,
                "delivered": row.delivered if row else 0,
                "failed_attempts": row.failed_attempts if row else 0,
                "dead_lettered": row.dead_lettered if row else 0,
                "dead_letters_pending": dead,
                "filtered_out": row.filtered_out if row else 0,
                "last_error": row.last_error if row else None,
                "last_error_at": row.last_error_at if row else None,
                "last_success_at": row.last_success_at if row else None,
            },
        })
        out.append(body)
    return out
