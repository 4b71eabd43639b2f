"""``tessera keys``, ``tessera privacy`` and ``tessera audit``.

Keys created here are stored hashed in the trust records every API process
reads, so they work, and stop working when revoked, without a restart. The
token is printed once; only its first characters are kept to tell keys apart.
Every change is written to the audit log with the actor ``cli``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tessera.privacy import keys as managed
from tessera.privacy.records.base import AuditEntry, KeyKind

console = Console()
err = Console(stderr=True)

keys_app = typer.Typer(help="API and write keys: create, list, rotate, revoke (no restart).",
                       no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of admin actions and privacy requests.",
                        no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="tessera.yaml (default: $TESSERA_CONFIG, else the demo settings)",
    show_default=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Where the embedded files live (default: $TESSERA_DATA_DIR or ./.tessera)",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _runtime(config: Path | None, data: Path | None) -> Any:
    from tessera.cli import _runtime as build

    return build(config, data)


def _fail(message: str) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(1)


def _audit(runtime: Any, action: str, target: str, **details: Any) -> None:
    runtime.records.audit(AuditEntry(action=action, actor="cli", at=time.time(), target=target,
                                     details=details))


@keys_app.command("create")
def keys_create(
    kind: Annotated[str, typer.Argument(help="write (ingest for one source) or api (scoped)")],
    source: Annotated[str | None, typer.Option(help="The source a write key ingests for")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="profiles:read, segments:read, decisions:read or admin (repeatable)")
    ] = None,
    name: Annotated[str, typer.Option(help="A label to recognize the key by")] = "",
    rate: Annotated[float | None, typer.Option(
        help="Requests per second this key may make (default: privacy.rate_limit)")] = None,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a key and print it once: it is stored only as a digest."""
    if kind not in ("write", "api"):
        raise _fail(f"kind must be 'write' or 'api', not {kind!r}")
    runtime = _runtime(config, data_dir_)
    if source is not None and source not in {s.name for s in runtime.config.sources}:
        raise _fail(f"no source {source!r} in the configuration")
    key_kind: KeyKind = "write" if kind == "write" else "api"
    try:
        token, record = managed.create(runtime.records, key_kind, source=source,
                                       scopes=scope or (), name=name, rate_per_second=rate)
    except managed.KeyError_ as exc:
        raise _fail(str(exc)) from None
    _audit(runtime, "keys.create", record.id, kind=record.kind, scopes=sorted(record.scopes),
           source=record.source)
    _print_created(token, record, as_json)


def _print_created(token: str, record: Any, as_json: bool) -> None:
    if as_json:
        console.print_json(orjson.dumps({"key": token, **managed.describe(record)}).decode())
        return
    console.print(f"id:     {record.id}")
    console.print(f"key:    {token}", markup=False, highlight=False)
    console.print("(shown once: only its digest is stored)")


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys")] = False,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Managed keys (configured ones are in tessera.yaml), never their secret part."""
    runtime = _runtime(config, data_dir_)
    rows = [managed.describe(k) for k in runtime.records.list_keys(include_revoked=all_)]
    if as_json:
        console.print_json(orjson.dumps(rows).decode())
        return
    table = Table("id", "kind", "prefix", "source / scopes", "name", "created", "revoked")
    for r in rows:
        what = r["source"] if r["kind"] == "write" else " ".join(r["scopes"])  # type: ignore[arg-type]
        table.add_row(str(r["id"]), str(r["kind"]), f"{r['prefix']}…", str(what), str(r["name"]),
                      _when(r["created_at"]), _when(r["revoked_at"]))
    console.print(table)


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...)")],
    config: ConfigOpt = None, data_dir_: DataDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Replace a key by a new one with the same rights; the old one is revoked."""
    runtime = _runtime(config, data_dir_)
    try:
        token, record = managed.rotate(runtime.records, key_id)
    except managed.KeyError_ as exc:
        raise _fail(str(exc)) from None
    _audit(runtime, "keys.rotate", key_id, new_key=record.id)
    _print_created(token, record, as_json)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...)")],
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Revoke a key; API processes refuse it within privacy.key_cache_seconds."""
    runtime = _runtime(config, data_dir_)
    try:
        managed.revoke(runtime.records, key_id)
    except managed.KeyError_ as exc:
        raise _fail(str(exc)) from None
    _audit(runtime, "keys.revoke", key_id)
    console.print(f"revoked {key_id}")


@audit_app.command("list")
def audit_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    action: Annotated[str | None, typer.Option(help="Only actions starting with this")] = None,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """The newest entries first."""
    runtime = _runtime(config, data_dir_)
    entries = runtime.records.audit_entries(limit=limit, action=action)
    if as_json:
        console.print_json(orjson.dumps([entry_dict(e) for e in entries]).decode())
        return
    table = Table("id", "time", "action", "actor", "target", "outcome")
    for e in entries:
        table.add_row(str(e.id), _when(e.at), e.action, e.actor, e.target, e.outcome)
    console.print(table)


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at, "action": entry.action, "actor": entry.actor,
            "target": entry.target, "outcome": entry.outcome, "details": entry.details}


privacy_app = typer.Typer(help="Data subject requests: erase or export a person.",
                          no_args_is_help=True)


def _subject(runtime: Any, identifier: str) -> tuple[str, str]:
    from tessera.privacy.erasure import InvalidIdentifier, parse_identifier

    try:
        return parse_identifier(runtime, identifier)
    except InvalidIdentifier as exc:
        raise _fail(f"identifier: {exc}") from None


@privacy_app.command("erase")
def privacy_erase(
    identifier: Annotated[str, typer.Argument(help="Any identifier of the person (type:value)")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Erase the whole resolved person everywhere, as POST /v1/privacy/erasure does."""
    import asyncio

    from tessera.privacy.erasure import ErasureBusy, erase_person

    runtime = _runtime(config, data_dir_)
    subject = _subject(runtime, identifier)
    if not yes and not typer.confirm("Erase this person and everything linked to them?"):
        raise typer.Exit(1)

    async def main() -> dict[str, Any]:
        await runtime.start()
        try:
            return (await erase_person(runtime, subject, "cli")).as_dict()
        finally:
            await runtime.close()

    try:
        report = asyncio.run(main())
    except ErasureBusy as exc:
        raise _fail(f"{exc}; run the command again") from None
    console.print_json(orjson.dumps(report).decode())


@privacy_app.command("access")
def privacy_access(
    identifier: Annotated[str, typer.Argument(help="Any identifier of the person (type:value)")],
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Print everything held about the person as JSON, as POST /v1/privacy/access does."""
    from tessera.privacy.access import export_person

    runtime = _runtime(config, data_dir_)
    export = export_person(runtime, _subject(runtime, identifier))
    runtime.records.audit(AuditEntry("privacy.access", "cli", time.time(),
                                     target=export["profile_id"] if export else "(no profile)",
                                     outcome="ok" if export else "not_found"))
    runtime.store.close()
    if export is None:
        raise _fail("no profile has this identifier")
    typer.echo(orjson.dumps(export, option=orjson.OPT_INDENT_2).decode())


@privacy_app.command("new-key")
def privacy_new_key(
    key_id: Annotated[str, typer.Argument(help="An id for the key (letters, digits, _ or -)")],
) -> None:
    """Print a fresh 256-bit key as KEY_ID:BASE64, to put first in TESSERA_PII_KEYS."""
    from tessera.privacy.encryption import EncryptionError, Keyring, new_key

    entry = f"{key_id}:{new_key()}"
    try:
        Keyring.parse(entry, "key")
    except EncryptionError as exc:
        raise _fail(str(exc)) from None
    console.print(entry, markup=False, highlight=False)


@privacy_app.command("rotate-key")
def privacy_rotate_key(
    max_profiles: Annotated[int | None, typer.Option(
        help="Stop after this many profiles; the next run continues from there", min=1)] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Start a new pass from the first profile")] = False,
    config: ConfigOpt = None, data_dir_: DataDirOpt = None,
) -> None:
    """Re-encrypt stored personal data under the first key of TESSERA_PII_KEYS.

    Resumable: an interrupted run continues where it stopped. When every value
    is under the current key, older key ids are retired and may be removed from
    the environment. Restart the server and workers with the new key first.
    """
    from tessera.privacy.rotation import rotate

    runtime = _runtime(config, data_dir_)
    try:
        report = rotate(runtime.store, runtime.records, max_profiles=max_profiles,
                        restart=restart,
                        progress=lambda r: err.print(f"{r.profiles:,} profiles, {r.traits:,} "
                                                     f"traits, {r.events:,} events"))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        runtime.store.close()
    _audit(runtime, "privacy.rotate_key", report.target, profiles=report.profiles,
           traits=report.traits, events=report.events, complete=report.complete,
           retired=report.retired)
    console.print_json(orjson.dumps(report.as_dict()).decode())
    if report.complete and report.waiting_outbox:
        err.print(f"{report.waiting_outbox} outbox messages still use an older key: keep a "
                  f"worker running so they are relayed, then run this again to retire it")
