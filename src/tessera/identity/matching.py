"""Probabilistic identity matching with Splink (Fellegi-Sunter), over profile traits.

Deterministic identity resolution links profiles that share an identifier.
Matching finds the profiles that share none but describe the same person
(name, date of birth, address, phone fragments): Splink estimates the model
(u by random sampling, m by expectation maximisation over blocking rules)
and scores the candidate pairs its blocking rules produce.

* At or above ``auto_merge`` a pair is merged through the identity graph, as a
  merge with the reason ``probabilistic, score p`` and a decision id as its
  cause, so :mod:`tessera.identity.unmerge` can undo it.
* Between ``review`` and ``auto_merge`` it goes to the review queue
  (:mod:`tessera.identity.review`).
* Decided pairs are remembered and never queued or merged again.

Merges respect the identifier limits: two profiles with different member
numbers (limit 1) are never merged, whatever their score. The settings are
backend-neutral: the same :class:`MatchSettings` run on Splink's DuckDB
backend (the default) or its Spark backend (``backend="spark"``, needs pyspark).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.config import TesseraConfig
from tessera.events.envelope import Event, iso_time
from tessera.identity.review import ReviewStore, ordered
from tessera.processing.profiles import DERIVED_SOURCE, DERIVED_TOPIC
from tessera.profiles.survivorship import Survivorship
from tessera.store.base import Identifier, Store, Trait

log = logging.getLogger(__name__)
Compare = Literal["name", "date", "exact", "fuzzy", "id", "postcode", "block"]
UNIQUE_ID = "profile_id"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchColumn(_Model):
    trait: str
    """The profile trait holding the value."""
    compare: Compare = "exact"
    """How the column is scored; ``block``: not scored, only there for the blocking rules.

    Fellegi-Sunter multiplies the evidence of the columns as if they were independent;
    columns that describe one fact (street, postcode, city of one address) count that
    fact several times over, and people of one household then outscore their
    different names, birth dates and numbers. Such a column can still block."""
    date_format: str = "%Y-%m-%d"
    tf: bool = False
    """Term-frequency adjustment: agreeing on a rare value counts more."""


class MatchSettings(_Model):
    columns: dict[str, MatchColumn] = Field(min_length=1)
    blocking: list[list[str]] = Field(min_length=1)
    """Candidate pairs: records agreeing on every expression of one rule."""
    training: list[list[str]] = Field(min_length=1)
    """Blocking rules of the expectation-maximisation sessions that estimate m."""
    deterministic: list[list[str]] = Field(min_length=1)
    """Rules that almost surely mean a match, to estimate the prior."""
    recall: float = Field(default=0.7, gt=0, le=1)
    auto_merge: float = Field(default=0.99, gt=0, le=1)
    review: float = Field(default=0.8, gt=0, le=1)
    u_max_pairs: float = Field(default=1e6, gt=0)
    seed: int = 42

    @model_validator(mode="after")
    def _something_scored(self) -> MatchSettings:
        if all(c.compare == "block" for c in self.columns.values()):
            raise ValueError("columns: at least one column must be scored (compare other "
                             "than 'block')")
        return self


DEFAULT_SETTINGS = MatchSettings(
    columns={
        "first_name": MatchColumn(trait="first_name", compare="name"),
        "last_name": MatchColumn(trait="last_name", compare="name"),
        "date_of_birth": MatchColumn(trait="date_of_birth", compare="date"),
        "address": MatchColumn(trait="address", compare="fuzzy"),
        "postcode": MatchColumn(trait="postcode", compare="postcode", tf=True),
        "city": MatchColumn(trait="city", compare="block"),  # the address's, scored there
        "phone_tail": MatchColumn(trait="phone", compare="id"),
    },
    # name prefixes (typos) only together with a place or the year of birth: a bare
    # prefix rule compares most of a large population with itself (see docs/batch.md)
    blocking=[["first_name", "last_name"], ["date_of_birth"], ["postcode", "last_name"],
              ["substr(first_name,1,2)", "substr(last_name,1,2)", "postcode"],
              ["substr(first_name,1,2)", "substr(last_name,1,2)", "substr(date_of_birth,1,4)"],
              ["substr(first_name,1,2)", "substr(last_name,1,2)", "city"]],
    training=[["date_of_birth"], ["first_name", "last_name"]],
    deterministic=[["first_name", "last_name", "date_of_birth"]],
)


def load_settings(path: str | Path | None) -> MatchSettings:
    if path is None:
        return DEFAULT_SETTINGS
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return MatchSettings.model_validate(raw)


# -- reading the profiles ----------------------------------------------------


def load_profiles(store: Store, settings: MatchSettings) -> list[dict[str, Any]]:
    """One row per live profile with at least one matching column.

    One bulk read of the wanted traits (:meth:`Store.trait_values`), not a transaction
    and a :class:`Trait` per value: at 100,000 profiles the per-chunk reads took most
    of the run's load phase. Identifiers are read later, only for the profiles a
    candidate pair names (:meth:`Matcher.run`).
    """
    wanted = [(name, col.trait, name.endswith("_tail")) for name, col in settings.columns.items()]
    traits = list(dict.fromkeys(trait for _, trait, _ in wanted))
    rows: list[dict[str, Any]] = []
    for pid, values in store.trait_values(traits):
        row: dict[str, Any] = {UNIQUE_ID: pid}
        found = False
        for name, trait, tail in wanted:
            value = values.get(trait)
            if value.__class__ is str and not tail:  # the common case, inline: 800,000 calls
                value = value.strip().lower() or None
            elif value is not None:
                value = _clean(value, tail)
            row[name] = value
            if value is not None:
                found = True
        if found:
            rows.append(row)
    return rows


def compared_value(trait: Trait | None, column: str,
                   settings: MatchSettings = DEFAULT_SETTINGS) -> str | None:
    """The value matching compares in ``column`` (lower-cased; phone tails cut), so that a
    reviewer sees which fields of a candidate pair agree as the scoring saw them."""
    if column not in settings.columns:
        raise KeyError(f"no matching column {column!r}")
    return _clean(None if trait is None else trait.value, column.endswith("_tail"))


def _clean(value: Any, tail: bool) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip().lower()
    if tail:
        text = "".join(c for c in text if c.isdigit())[-7:]
    return text or None


# -- scoring with Splink -----------------------------------------------------


def _rule(exprs: list[str]) -> Any:
    from splink import block_on

    return block_on(*exprs)


def _guarded_damerau(name: str, thresholds: list[int]) -> Any:
    """Splink's ``DamerauLevenshteinAtThresholds``, each level guarded by plain Levenshtein.

    DuckDB's ``damerau_levenshtein`` costs about seven times its ``levenshtein``, and
    a level is evaluated for every pair that no earlier level took: at 100,000
    profiles the social security number's two levels were two thirds of the u
    phase. A Damerau-Levenshtein distance of k implies a Levenshtein distance of at
    most 2k (a transposition is two substitutions), so ``levenshtein <= 2k AND
    damerau_levenshtein <= k`` is the same condition, and the expensive function
    only runs on the few pairs that pass the cheap one.
    """
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    class Guarded(cl.DamerauLevenshteinAtThresholds):
        def create_comparison_levels(self) -> list[Any]:
            col = self.col_expression
            return [
                cll.NullLevel(col),
                cll.ExactMatchLevel(col),
                *[cll.And(cll.LevenshteinLevel(col, 2 * k), cll.DamerauLevenshteinLevel(col, k))
                  .configure(label_for_charts=f"Damerau-Levenshtein distance of {name} <= {k}")
                  for k in self.thresholds],
                cll.ElseLevel(),
            ]

    return Guarded(name, thresholds)


def splink_settings(settings: MatchSettings) -> Any:
    import splink.comparison_library as cl
    from splink import SettingsCreator

    comparisons = []
    for name, col in settings.columns.items():
        comp: Any
        if col.compare == "block":
            continue
        if col.compare == "name":
            comp = cl.NameComparison(name)
        elif col.compare == "date":
            comp = cl.DateOfBirthComparison(name, input_is_string=True,
                                            datetime_format=col.date_format)
        elif col.compare == "fuzzy":
            comp = cl.JaroWinklerAtThresholds(name, [0.9, 0.8])
        elif col.compare == "id":
            comp = _guarded_damerau(name, [1, 2])
        elif col.compare == "postcode":
            comp = _guarded_damerau(name, [1])
        else:
            comp = cl.ExactMatch(name)
        if col.tf:
            comp = comp.configure(term_frequency_adjustments=True)
        comparisons.append(comp)
    return SettingsCreator(
        unique_id_column_name=UNIQUE_ID,
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[_rule(r) for r in settings.blocking],
        comparisons=comparisons,
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def make_db_api(backend: str = "duckdb") -> Any:
    if backend == "duckdb":
        from splink import DuckDBAPI

        return DuckDBAPI()
    if backend == "spark":  # pragma: no cover - needs pyspark and a Spark session
        from pyspark.sql import SparkSession
        from splink import SparkAPI

        return SparkAPI(spark_session=SparkSession.builder.getOrCreate())
    raise ValueError(f"unknown Splink backend {backend!r}; use duckdb or spark")


def score_pairs(rows: Sequence[dict[str, Any]], settings: MatchSettings,
                threshold: float | None = None, backend: str = "duckdb",
                phases: dict[str, float] | None = None) -> list[tuple[str, str, float]]:
    """Candidate pairs ``(a, b, probability)`` at or above ``threshold`` (default: review).

    ``phases`` receives the seconds of each step (prior, u, m, predict).
    """
    phases = {} if phases is None else phases
    if len(rows) < 2:
        return []
    import pandas as pd
    from splink import Linker

    threshold = settings.review if threshold is None else threshold
    frame = pd.DataFrame.from_records(list(rows))
    db_api = make_db_api(backend)
    linker = Linker(db_api.register(frame), splink_settings(settings), log_level=None)
    quiet = logging.getLogger("splink")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        t = time.monotonic()
        linker.training.estimate_probability_two_random_records_match(
            [_rule(r) for r in settings.deterministic], recall=settings.recall)
        phases["prior"], t = time.monotonic() - t, time.monotonic()
        linker.training.estimate_u_using_random_sampling(
            max_pairs=settings.u_max_pairs, seed=settings.seed)
        phases["u"], t = time.monotonic() - t, time.monotonic()
        for rule in settings.training:
            linker.training.estimate_parameters_using_expectation_maximisation(_rule(rule))
        phases["m"], t = time.monotonic() - t, time.monotonic()
        predictions = linker.inference.predict(threshold_match_probability=threshold)
        found = predictions.as_pandas_dataframe()
        phases["predict"] = time.monotonic() - t
    finally:
        quiet.setLevel(level)
    left, right = f"{UNIQUE_ID}_l", f"{UNIQUE_ID}_r"
    return [(str(a), str(b), float(p)) for a, b, p in
            zip(found[left], found[right], found["match_probability"], strict=True)]


# -- merging -----------------------------------------------------------------


@dataclass(slots=True)
class MatchReport:
    profiles: int = 0
    candidates: int = 0
    merged: int = 0
    queued: int = 0
    skipped_decided: int = 0
    skipped_limits: int = 0
    seconds: float = 0.0
    merges: list[tuple[str, str, float]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per step: load, prior, u, m, predict, plan, merge, queue."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "profiles", "candidates", "merged", "queued", "skipped_decided", "skipped_limits",
            "seconds")}
        out["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        return out


def decision_uid(a: str, b: str) -> str:
    a, b = ordered(a, b)
    return "match-" + hashlib.blake2b(f"{a}\x1f{b}".encode(), digest_size=12).hexdigest()


def reason_for(score: float) -> str:
    return f"probabilistic, score {score:.4f}"


class Matcher:
    """Scores, merges and queues; owns no state but the review store."""

    def __init__(self, config: TesseraConfig, store: Store, review: ReviewStore,
                 settings: MatchSettings = DEFAULT_SETTINGS) -> None:
        self.config = config
        self.store = store
        self.review = review
        self.settings = settings
        self.survivorship = Survivorship(config)
        idents = config.all_identifiers()
        self._limit = {i.type: i.limit for i in idents}
        self._priority = {i.type: i.priority for i in idents}

    def fits(self, identifiers: Iterable[Identifier]) -> bool:
        per_type: dict[str, int] = {}
        for type_, _ in identifiers:
            per_type[type_] = per_type.get(type_, 0) + 1
        return all(not self._limit.get(t, 0) or n <= self._limit[t] for t, n in per_type.items())

    def _rank(self, identifiers: set[Identifier], pid: str) -> tuple[int, str]:
        best = min((self._priority.get(t, 1000) for t, _ in identifiers), default=10_000)
        return best, pid

    def run(self, backend: str = "duckdb", dry_run: bool = False, by: str = "auto"
            ) -> MatchReport:
        started = time.monotonic()
        report = MatchReport()
        rows = load_profiles(self.store, self.settings)
        report.phases["load"] = time.monotonic() - started
        report.profiles = len(rows)
        pairs = score_pairs(rows, self.settings, backend=backend, phases=report.phases)
        report.candidates = len(pairs)
        rejected = self._current_rejections()
        auto: list[tuple[str, str, float]] = []
        review: list[tuple[str, str, float]] = []
        for a, b, p in pairs:
            if ordered(a, b) in rejected:
                report.skipped_decided += 1
            elif p >= self.settings.auto_merge:
                auto.append((a, b, p))
            else:
                review.append((a, b, p))
        if dry_run:
            report.merged, report.queued = len(auto), len(review)
        else:
            t = time.monotonic()
            identifiers = self.identifiers_of({p for a, b, _ in auto for p in (a, b)})
            ops, refused = self.plan(auto, identifiers)
            report.phases["plan"], t = time.monotonic() - t, time.monotonic()
            report.skipped_limits = len(refused)
            report.merges = self.merge(ops, identifiers, by=by)
            report.merged = len(report.merges)
            report.phases["merge"], t = time.monotonic() - t, time.monotonic()
            report.queued = self.review.queue(review + refused)
            report.phases["queue"] = time.monotonic() - t
        report.seconds = time.monotonic() - started
        return report

    def identifiers_of(self, profile_ids: Iterable[str]) -> dict[str, set[Identifier]]:
        """The identifiers of these profiles now (those a merge plan needs, not everyone's)."""
        with self.store.transaction() as tx:
            return {p: set(i) for p, i in tx.identifiers_of(sorted(profile_ids)).items()}

    def _current_rejections(self) -> set[tuple[str, str]]:
        """Rejected pairs, each side followed through later merges to its profile now."""
        out: set[tuple[str, str]] = set()
        for pair in self.review.decided():
            if pair.state != "rejected":
                continue
            a = self.store.resolve(pair.a) or pair.a
            b = self.store.resolve(pair.b) or pair.b
            out.add(ordered(a, b))
            out.add(ordered(pair.a, pair.b))
        return out

    def plan(self, edges: Sequence[tuple[str, str, float]],
             identifiers: dict[str, set[Identifier]]
             ) -> tuple[list[tuple[str, str, float]], list[tuple[str, str, float]]]:
        """Merges ``(into, merged, score)`` in descending score (union-find), and refusals."""
        parent: dict[str, str] = {}
        members = {pid: set(ids) for pid, ids in identifiers.items()}

        def find(x: str) -> str:
            root = x
            for _ in range(len(parent) + 1):
                up = parent.get(root)
                if up is None:
                    break
                root = up
            while x != root:  # path compression, bounded by the path's length
                parent[x], x = root, parent[x]
            return root

        ops: list[tuple[str, str, float]] = []
        refused: list[tuple[str, str, float]] = []
        for a, b, p in sorted(edges, key=lambda e: (-e[2], e[0], e[1])):
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            ia, ib = members.setdefault(ra, set()), members.setdefault(rb, set())
            if not self.fits(ia | ib):
                refused.append((a, b, p))
                continue
            into, merged = sorted((ra, rb), key=lambda r: self._rank(members[r], r))
            ops.append((into, merged, p))
            parent[merged] = into
            members[into] = ia | ib
        return ops, refused

    def merge(self, ops: Sequence[tuple[str, str, float]],
              identifiers: dict[str, set[Identifier]], by: str = "auto", chunk: int = 2000
              ) -> list[tuple[str, str, float]]:
        """Apply planned merges through the store, each with its score as the reason.

        A transaction per ``chunk`` merges, read and written like the profiles
        processor's batches: the traits of every profile of the chunk in one read,
        survivorship in memory (a profile merged into one that is merged later in the
        same chunk passes its survivors on), then one delete of the merged profiles'
        traits and one write of each surviving profile's changed ones. Per merge only
        :meth:`StoreTx.merge` itself remains, with its own decision id and reason.
        """
        done: list[tuple[str, str, float]] = []
        for start in range(0, len(ops), chunk):
            part = ops[start:start + chunk]
            decisions: list[Any] = []
            now = time.time()
            with self.store.transaction() as tx:
                pids = sorted({p for op in part for p in op[:2]})
                tx.lock_identifiers(sorted({i for p in pids for i in identifiers.get(p, ())}))
                tx.lock_profiles(pids)
                current = {p: set(ids) for p, ids in tx.identifiers_of(pids).items()}
                before = tx.traits(pids)
                traits = dict(before)
                gone: list[str] = []
                derived: list[Event] = []
                for into, merged, score in part:
                    if not current.get(into) or not current.get(merged):
                        continue  # merged away meanwhile (deterministically): nothing to do
                    if not self.fits(current[into] | current[merged]):
                        continue
                    uid = decision_uid(into, merged)
                    reason = reason_for(score)
                    tx.merge(into, [merged], uid, now, reason)
                    traits[into] = self.survivorship.combine([traits[into], traits.pop(merged)])
                    gone.append(merged)
                    derived.append(merged_event(uid, into, [merged], reason, now))
                    done.append((into, merged, score))
                    decisions.append((into, merged, score, "merged", by, None,
                                      sorted(current[into]), sorted(current[merged])))
                    current[into] |= current.pop(merged)
                if gone:
                    tx.delete_traits(gone)
                for pid, combined in traits.items():
                    old = before[pid]
                    changed = {n: t for n, t in combined.items() if old.get(n) is not t}
                    if changed:
                        tx.put_traits(pid, changed)
                if derived:
                    tx.add_outbox([(DERIVED_TOPIC, d.uid, d.partition_key, d.to_json())
                                   for d in derived])
            self.review.record_many(decisions)
        return done

    def accept(self, a: str, b: str, by: str = "reviewer") -> tuple[str, str] | None:
        """Merge a queued pair now; None if either side is gone or a limit forbids it."""
        pair = self.review.get(a, b)
        score = pair.score if pair else 1.0
        ra, rb = self.store.resolve(a) or a, self.store.resolve(b) or b
        if ra == rb:
            self.review.record(a, b, score, "merged", by, note="already one profile")
            return ra, rb
        identifiers = self.identifiers_of([ra, rb])
        ops, refused = self.plan([(ra, rb, score)], identifiers)
        if refused or not ops:
            return None
        done = self.merge(ops, identifiers, by=by)
        if not done:
            return None
        if ordered(a, b) != ordered(ra, rb):
            self.review.record(a, b, score, "merged", by)
        return done[0][0], done[0][1]

    def reject(self, a: str, b: str, by: str = "reviewer", note: str | None = None) -> None:
        pair = self.review.get(a, b)
        self.review.record(a, b, pair.score if pair else 0.0, "rejected", by, note=note)


def merged_event(uid: str, into: str, merged: list[str], reason: str, now: float) -> Event:
    return Event(
        id=f"{uid}:identity.merged", source=DERIVED_SOURCE, type="identity.merged", time=now,
        received_at=now, source_name="tessera",
        data={"profile_id": into, "merged_profile_ids": merged,
              "caused_by": {"decision": uid}, "reason": reason, "at": iso_time(now)},
        identifiers=[("profile_id", into)], subject=into, datacontenttype="application/json")
