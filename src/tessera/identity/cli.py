"""``tessera identity match | review | accept | reject | unmerge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

identity_app = typer.Typer(help="Probabilistic identity matching, its review queue, unmerge.",
                           no_args_is_help=True)
console = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir")]


def _parts(config: Path | None, data: Path | None) -> tuple[Any, Any]:
    from tessera.cli import _runtime
    from tessera.identity.review import ReviewStore

    runtime = _runtime(config, data)
    runtime.store.migrate()
    return runtime, ReviewStore.in_data_dir(runtime.data_dir)


@identity_app.command("match")
def match(
    settings: Annotated[Path | None, typer.Option(help="Matching settings YAML (columns, "
                                                  "blocking, thresholds)")] = None,
    auto_merge: Annotated[float | None, typer.Option(help="Merge at or above this "
                                                     "probability")] = None,
    review: Annotated[float | None, typer.Option(help="Queue for review at or above "
                                                 "this probability")] = None,
    backend: Annotated[str, typer.Option(help="Splink backend: duckdb or spark")] = "duckdb",
    dry_run: Annotated[bool, typer.Option(help="Score only; merge and queue nothing")] = False,
    config: ConfigOpt = None, data_dir_: DataOpt = None,
) -> None:
    """Score profiles that share no identifier; merge the sure ones, queue the likely ones."""
    from tessera.identity.matching import Matcher, load_settings

    runtime, store = _parts(config, data_dir_)
    chosen = load_settings(settings)
    update = {k: v for k, v in (("auto_merge", auto_merge), ("review", review)) if v is not None}
    chosen = chosen.model_copy(update=update)
    report = Matcher(runtime.config, runtime.store, store, chosen).run(backend, dry_run)
    console.print_json(orjson.dumps(report.as_dict()).decode())


@identity_app.command("review")
def review_list(
    state: Annotated[str, typer.Option(help="pending, merged or rejected")] = "pending",
    limit: Annotated[int, typer.Option(min=1)] = 50,
    config: ConfigOpt = None, data_dir_: DataOpt = None,
) -> None:
    """List candidate pairs, highest score first."""
    _, store = _parts(config, data_dir_)
    table = Table("score", "profile a", "profile b", "state", "decided by")
    for pair in store.pairs(state, limit):
        table.add_row(f"{pair.score:.4f}", pair.a, pair.b, pair.state, pair.decided_by or "")
    console.print(table)
    console.print(store.counts())


@identity_app.command("accept")
def accept(a: str, b: str, by: Annotated[str, typer.Option()] = "cli",
           config: ConfigOpt = None, data_dir_: DataOpt = None) -> None:
    """Accept a queued pair: merge the two profiles (probabilistic, with its score)."""
    from tessera.identity.matching import Matcher

    runtime, store = _parts(config, data_dir_)
    done = Matcher(runtime.config, runtime.store, store).accept(a, b, by)
    if done is None:
        err.print("not merged: a profile is gone or an identifier limit forbids it")
        raise typer.Exit(1)
    console.print(f"merged {done[1]} into {done[0]}")


@identity_app.command("reject")
def reject(a: str, b: str, by: Annotated[str, typer.Option()] = "cli",
           note: Annotated[str | None, typer.Option()] = None,
           config: ConfigOpt = None, data_dir_: DataOpt = None) -> None:
    """Reject a pair: matching will never merge or queue it again."""
    from tessera.identity.matching import Matcher

    runtime, store = _parts(config, data_dir_)
    Matcher(runtime.config, runtime.store, store).reject(a, b, by, note)
    console.print(f"rejected {a} / {b}")


@identity_app.command("unmerge")
def unmerge(
    profile: Annotated[str, typer.Argument(help="Profile id or TYPE:VALUE")],
    merged: Annotated[str | None, typer.Option(help="Undo only the merge of this profile id "
                                               "(default: every probabilistic merge)")] = None,
    by: Annotated[str, typer.Option()] = "cli",
    config: ConfigOpt = None, data_dir_: DataOpt = None,
) -> None:
    """Split a wrongly merged profile back apart and re-derive the traits of each part."""
    from tessera.identity.unmerge import UnmergeError, Unmerger

    runtime, store = _parts(config, data_dir_)
    try:
        result = Unmerger(runtime.config, runtime.store, store).unmerge(profile, merged, by)
    except UnmergeError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    console.print(f"{result.profile_id}: split off {', '.join(result.split_off)} "
                  f"({result.moved_identifiers} identifiers, {result.moved_events} events)")
