"""``tessera relay outbox`` and ``tessera relay cdc``: from a service's PostgreSQL to Tessera."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

relay_app = typer.Typer(help="Relays from PostgreSQL services to Tessera: outbox and CDC.",
                        no_args_is_help=True)

DsnOpt = Annotated[str, typer.Option("--dsn", help="The service's PostgreSQL (libpq URL)")]
UrlOpt = Annotated[str, typer.Option(
    "--url", envvar="TESSERA_URL", help="Tessera's API ($TESSERA_URL)")]
KeyOpt = Annotated[str, typer.Option(
    "--write-key", envvar="TESSERA_WRITE_KEY", help="The source's write key ($TESSERA_WRITE_KEY)")]
OnceOpt = Annotated[bool, typer.Option(
    "--once", help="Publish what is pending, then exit")]


def _stopper() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _metrics(port: int | None) -> None:
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")


@relay_app.command("outbox")
def outbox(
    dsn: DsnOpt, url: UrlOpt, write_key: KeyOpt,
    table: Annotated[str, typer.Option(help="The outbox table (schema.table)")] =
        "tessera_outbox",
    channel: Annotated[str, typer.Option(help="The NOTIFY channel")] = "tessera_outbox",
    batch_size: Annotated[int, typer.Option(min=1, max=5000)] = 100,
    poll_seconds: Annotated[float, typer.Option(help="Poll this often without NOTIFY")] = 1.0,
    create: Annotated[bool, typer.Option(help="Create the outbox table if missing")] = False,
    once: OnceOpt = False,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus metrics on 127.0.0.1:PORT")] = None,
) -> None:
    """Publish the committed rows of a transactional outbox, in order, at least once."""
    import psycopg

    from tessera.publish import Publisher
    from tessera.relay.outbox import OutboxRelay, create_outbox

    if create:
        with psycopg.connect(dsn) as conn:
            create_outbox(conn, table)
    _metrics(metrics_port)
    with Publisher(url, write_key, source="tessera-relay", batch_size=batch_size) as publisher:
        relay = OutboxRelay(dsn, publisher, table=table, channel=channel, batch_size=batch_size,
                            poll_seconds=poll_seconds)
        if once:
            n = relay.drain()
            relay.close()
            console.print(f"{n} event(s) published")
            return
        stop = _stopper()
        console.print(f"relaying {table} to {url}")
        relay.run(stop.is_set)
        console.print(f"stopped; {relay.stats.published} event(s) published")


@relay_app.command("cdc")
def cdc(
    dsn: DsnOpt,
    table: Annotated[list[str], typer.Option("--table", help="Table to capture (repeatable)")],
    url: Annotated[str | None, typer.Option("--url", envvar="TESSERA_URL")] = None,
    write_key: Annotated[str | None, typer.Option("--write-key",
                                                  envvar="TESSERA_WRITE_KEY")] = None,
    slot: Annotated[str, typer.Option(help="Logical replication slot")] = "tessera_cdc",
    type_prefix: Annotated[str | None, typer.Option(
        help="Event types are PREFIX.created/updated/deleted (default cdc.DB.SCHEMA.TABLE)")]
        = None,
    source: Annotated[str | None, typer.Option(help="CloudEvents source attribute")] = None,
    entity: Annotated[str | None, typer.Option(help="Entity name (default: the table)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 500,
    poll_seconds: Annotated[float, typer.Option()] = 1.0,
    once: OnceOpt = False,
    status: Annotated[bool, typer.Option("--status", help="Print the slot's lag and exit")]
        = False,
    drop_slot: Annotated[bool, typer.Option("--drop-slot", help="Drop the slot and exit")]
        = False,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus metrics (tessera_cdc_slot_lag_bytes) on 127.0.0.1:PORT")] = None,
) -> None:
    """Capture row changes of tables (logical decoding, wal2json) as entity-change events."""
    from tessera.publish import Publisher
    from tessera.relay.cdc import CdcRelay

    if status or drop_slot:
        relay = CdcRelay(dsn, table, sender=None, slot=slot)
        try:
            if drop_slot:
                relay.drop_slot()
                console.print(f"slot {slot} dropped")
            else:
                console.print(f"slot {slot}: lag {relay.lag_bytes()} bytes")
        except RuntimeError as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(1) from None
        finally:
            relay.close()
        return
    if not url or not write_key:
        err.print("--url and --write-key are required (or $TESSERA_URL, $TESSERA_WRITE_KEY)")
        raise typer.Exit(2)
    gauge = None
    if metrics_port is not None:
        from prometheus_client import Gauge

        gauge = Gauge("tessera_cdc_slot_lag_bytes", "WAL bytes the CDC slot holds back",
                      ["slot"])
        _metrics(metrics_port)
    with Publisher(url, write_key, source=source or "tessera-cdc") as publisher:
        relay = CdcRelay(dsn, table, publisher, slot=slot, type_prefix=type_prefix,
                         source=source, entity=entity, batch_size=batch_size,
                         poll_seconds=poll_seconds)
        try:
            relay.ensure_slot()
        except RuntimeError as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(1) from None
        if once:
            n = relay.drain()
            console.print(f"{n} change(s) published; slot lag {relay.lag_bytes()} bytes")
            relay.close()
            return
        stop = _stopper()
        console.print(f"capturing {', '.join(table)} (slot {slot}) to {url}")

        def on_lag(lag: int) -> None:
            if gauge is not None:
                gauge.labels(slot).set(lag)

        relay.run(stop.is_set, on_lag=on_lag)
        console.print(f"stopped; {relay.stats.published} change(s) published")
