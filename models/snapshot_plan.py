"""The snapshot plan: which as-of dates a model trains, validates and is tested on, and why.

Snapshots are ``spacing_days`` apart (weekly by default), the latest with its horizon ending
by the cutoff (the test snapshot), back as far as the history allows: ``min_history_days`` of
the events the features and the outcome use before the first. ``max_count`` and a row budget
(``max_rows``, estimated from the profiles seen before each date) keep the newest ones. With
sampled training (:class:`SampledBuild`) the budget counts the rows the sample will build, not
every row the dates hold.

Validation is the last snapshot whose label window ends by the test snapshot's date, so the
round count and the model are never chosen on outcomes of the test window. When the history
is too short for that and one training snapshot before it, validation is the earliest
snapshot after the first one and the plan says by how many days the windows overlap.

With ``seasonal`` (``training.snapshots.seasonal``) the dates 52 weeks before the newest
snapshots train too, where the history reaches them: last year's same season, which a plan of a
few months never sees otherwise (they count in the row budget; the oldest go first).

Every way the plan differs from the configuration is a sentence in ``notes`` with its numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from propensity.core.config import ModelConfig, SnapshotConfig, season_before
from propensity.core.errors import UserError

# Estimated rows per date (profiles seen before it): the row budget's input.
RowEstimate = Callable[[list[dt.date]], dict[dt.date, int]]
MIN_SNAPSHOTS = 3


@dataclass(frozen=True)
class SampledBuild:
    """Sampled training's rows built from the plan's estimates, for the row budget.

    Beyond ``rows`` estimated rows, features are built for the held-out test profiles at the
    test snapshot and the validation profiles at the validation snapshot (whole), every row
    that may be positive and a sample of the others at a rate of at least ``min_rate``
    (:mod:`propensity.features.build.training_sample`): about ``rows``, or the whole rows plus
    ``min_rate`` of the rest when that is more. Positives are not known when the plan is made,
    so they count as sampled rows: when they alone fill more than ``rows``, more rows are built
    than this says (the sampling line printed with the plan gives the rows built).
    """

    rows: int  # training.sampling.rows
    min_rate: float  # training.sampling.min_rate
    test_fraction: float  # training.test_profile_fraction
    validation_share: float  # training.validation_profile_fraction

    def built(self, dates: list[dt.date], estimated: dict[dt.date, int], validation: dt.date) -> int:
        """About the rows built for ``dates`` (the last the test snapshot)."""
        total = sum(estimated.get(d, 0) for d in dates)
        if total <= self.rows:
            return total  # every row is built
        whole = self.test_fraction * estimated.get(dates[-1], 0) + (
            1 - self.test_fraction
        ) * self.validation_share * estimated.get(validation, 0)
        return round(max(self.rows, whole + self.min_rate * (total - whole)))


@dataclass(frozen=True)
class SnapshotPlan:
    """The dates (oldest first; the last is the test snapshot), the validation date and why."""

    dates: list[dt.date]
    validation: dt.date
    horizon_days: int
    spacing_days: int
    history_start: dt.date  # the first event of the types the features and the outcome use
    cutoff: dt.date
    notes: list[str] = field(default_factory=list)
    estimated_rows: dict[dt.date, int] = field(default_factory=dict)
    seasonal: int = 0  # the newest snapshots with last year's date added (training.snapshots.seasonal)
    season_dates: tuple[dt.date, ...] = ()  # the dates that added (not also on the regular grid)

    @property
    def test(self) -> dt.date:
        """The test snapshot's date."""
        return self.dates[-1]

    @property
    def overlap_days(self) -> int:
        """Days the validation snapshot's label window reaches past the test snapshot's date."""
        return max(0, (self.validation + dt.timedelta(days=self.horizon_days) - self.test).days)

    def role(self, as_of: dt.date) -> str:
        """train (early stopping fit and refit), validation, refit (refit only) or test."""
        if as_of == self.test:
            return "test"
        if as_of == self.validation:
            return "validation"
        return "train" if as_of < self.validation else "refit"

    def config(self, snapshots: SnapshotConfig) -> SnapshotConfig:
        """``snapshots`` with this plan's count, spacing and seasonal dates (what the engines build)."""
        return snapshots.model_copy(
            update={
                "count": len(self.dates) - len(self.season_dates),
                "spacing_days": self.spacing_days,
                "seasonal": self.seasonal,
            }
        )

    def planned(self, model_cfg: ModelConfig) -> ModelConfig:
        """The model config whose snapshots are the plan's (what the engines build)."""
        snapshots = self.config(model_cfg.training.snapshots)
        return model_cfg.model_copy(
            update={"training": model_cfg.training.model_copy(update={"snapshots": snapshots})}
        )

    def settle(self, frame: pd.DataFrame, model_cfg: ModelConfig) -> SnapshotPlan:
        """The plan once each date's population is known: leading dates whose population is empty
        are dropped (said in the notes); a plan left without a test, a validation and a training
        snapshot with a population is refused, with the population and positives of every date."""
        table = self.table(frame)
        populated = table["population"].to_numpy() > 0
        first = int(populated.argmax()) if populated.any() else len(self.dates)
        dates = self.dates[first:]
        if len(dates) < 3:
            raise UserError(self._thin_population(table, model_cfg))
        validation = dates[validation_index(dates, self.horizon_days)]
        counts = dict(zip(self.dates, table["population"], strict=True))
        if counts[validation] == 0 or counts[dates[-1]] == 0:
            raise UserError(self._thin_population(table, model_cfg))
        if first == 0:
            return self
        note = (
            f"the population rule `{model_cfg.population}` holds no profile at the {first} earliest "
            f"snapshot(s) ({self.dates[0]} .. {self.dates[first - 1]}); training starts at {dates[0]}"
        )
        season = tuple(d for d in self.season_dates if d in dates)
        return dataclasses.replace(
            self,
            dates=dates,
            validation=validation,
            notes=[*self.notes, note],
            seasonal=self.seasonal - (len(self.season_dates) - len(season)),
            season_dates=season,
        )

    def _thin_population(self, table: pd.DataFrame, model_cfg: ModelConfig) -> str:
        """Why a plan cannot train: the population and positives of every date, and the cause."""
        empty = table[table["population"] == 0]
        shown = "; ".join(f"{r.as_of}: {r.population} ({r.positives} positives)" for r in table.itertuples())
        return (
            f"model '{model_cfg.name}': training needs a test, a validation and an earlier training "
            f"snapshot whose population is not empty, but the population rule `{model_cfg.population}` "
            f"holds no profile at {len(empty)} of the {len(table)} snapshot dates (population per date: "
            f"{shown}); the events the features and the outcome use start on {self.history_start}: use "
            f"data that reaches further back, a shorter outcome.horizon_days or a population rule that "
            f"holds at the early dates"
        )

    def summary(self) -> str:
        """One line: dates, count, spacing, last year's season, validation and test."""
        regular = [d for d in self.dates if d not in self.season_dates]
        season = (
            f" and {len(self.season_dates)} from last year's season "
            f"({', '.join(str(d) for d in self.season_dates)})"
            if self.season_dates
            else ""
        )
        return (
            f"{len(regular)} snapshots {self.spacing_days} days apart, {regular[0]} .. {self.test}{season} "
            f"(history from {self.history_start}); validation {self.validation}"
            + (
                f" (its labels overlap the test window by {self.overlap_days} days)"
                if self.overlap_days
                else ""
            )
            + f", test {self.test}"
        )

    def table(self, frame: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per date: its role, estimated rows and, given the labelled ``frame``, the
        population (rows) and positives at that date."""
        rows = []
        counts = _counts(frame) if frame is not None else {}
        for as_of in self.dates:
            population, positives = counts.get(as_of, (0, 0)) if frame is not None else (None, None)
            rows.append(
                {
                    "as_of": str(as_of),
                    "role": self.role(as_of),
                    "labels_end": str(as_of + dt.timedelta(days=self.horizon_days)),
                    "estimated_rows": self.estimated_rows.get(as_of),
                    "population": population,
                    "positives": positives,
                }
            )
        return pd.DataFrame(rows)


def _counts(frame: pd.DataFrame) -> dict[dt.date, tuple[int, int]]:
    """Rows and positives per as-of date of a labelled frame."""
    grouped = frame.groupby(pd.to_datetime(frame["as_of"]).dt.date)["label"].agg(["size", "sum"])
    return {d: (int(r["size"]), int(r["sum"])) for d, r in grouped.iterrows()}


def validation_index(dates: list[dt.date], horizon_days: int) -> int:
    """The last snapshot whose labels end by the test date, if a snapshot precedes it; else 1
    (the earliest with a training snapshot before it)."""
    test = dates[-1]
    clean = [i for i, d in enumerate(dates[:-1]) if d + dt.timedelta(days=horizon_days) <= test]
    return clean[-1] if clean and clean[-1] >= 1 else 1


def plan_snapshots(
    snapshots: SnapshotConfig,
    history_start: dt.date,
    cutoff: dt.date,
    horizon_days: int,
    model_name: str,
    estimate: RowEstimate | None = None,
    sampled: SampledBuild | None = None,
) -> SnapshotPlan:
    """The plan for a model whose usable events start at ``history_start``, trained on the
    data before ``cutoff``; ``estimate`` gives rows per date for the row budget (None: no budget),
    which counts the rows ``sampled`` training builds of them (None: every row is built).

    Raises a UserError naming the dates and days at fault when not even 3 snapshots fit.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    earliest = history_start + dt.timedelta(days=snapshots.min_history_days)
    span = (latest - earliest).days
    if span < MIN_SNAPSHOTS - 1 and (snapshots.adapt or snapshots.count is None):
        raise UserError(
            f"model '{model_name}': the events the features and the outcome use run from {history_start} to "
            f"{cutoff - dt.timedelta(days=1)}; 3 training snapshots with a {horizon_days}-day horizon and "
            f"{snapshots.min_history_days} days of history before the first need the latest at {latest} and "
            f"the first on or after {earliest} ({span} days between them, 2 needed); use more data, a "
            f"shorter outcome.horizon_days or a lower training.snapshots.min_history_days"
        )
    if snapshots.count is None:
        count, spacing, notes = _adaptive(snapshots, span, earliest, latest)
    else:
        count, spacing, note = _fixed(snapshots, span, earliest, latest)
        notes = [note] if note else []
    dates = [latest - dt.timedelta(days=spacing * i) for i in reversed(range(count))]
    estimated: dict[dt.date, int] = {}
    if estimate is not None:
        estimated = estimate(dates)
        dates, note = _within_budget(dates, estimated, snapshots.max_rows, horizon_days, spacing, sampled)
        notes += [note] if note else []
    seasonal, season_dates, season_notes = _last_season(
        dates, snapshots, earliest, estimate, estimated, horizon_days, sampled
    )
    notes += season_notes
    dates = sorted([*dates, *season_dates])
    validation = dates[validation_index(dates, horizon_days)]
    plan = SnapshotPlan(
        dates,
        validation,
        horizon_days,
        spacing,
        history_start,
        cutoff,
        notes,
        estimated,
        seasonal,
        tuple(season_dates),
    )
    if plan.overlap_days:
        notes.append(_overlap_note(plan))
    return plan


def _adaptive(
    snapshots: SnapshotConfig, span: int, earliest: dt.date, latest: dt.date
) -> tuple[int, int, list[str]]:
    """(count, spacing, notes) of an adaptive plan (``count`` unset): the configured spacing,
    narrowed until 3 snapshots fit in the ``span`` days, as many as fit up to ``max_count``."""
    notes = []
    spacing = snapshots.spacing_days
    if span < (MIN_SNAPSHOTS - 1) * spacing:
        spacing = max(1, span // (MIN_SNAPSHOTS - 1))
        notes.append(
            f"{snapshots.spacing_days}-day spacing leaves fewer than 3 snapshots in the {span} days "
            f"between {earliest} and {latest}; using {spacing} days"
        )
    count = min(snapshots.max_count, span // spacing + 1)
    if count == snapshots.max_count and span // spacing + 1 > count:
        notes.append(
            f"the history allows {span // spacing + 1} snapshots; keeping the newest "
            f"{count} (training.snapshots.max_count)"
        )
    return count, spacing, notes


def _overlap_note(plan: SnapshotPlan) -> str:
    """Why the validation snapshot's labels overlap the test window, and by how much."""
    horizon_days, spacing = plan.horizon_days, plan.spacing_days
    return (
        f"validation {plan.validation} is not clear of the test window: a {horizon_days}-day horizon needs "
        f"{horizon_days + spacing} days between the first snapshot and the test snapshot for a training "
        f"snapshot before a validation snapshot whose labels end by {plan.test}; the history gives "
        f"{(plan.test - plan.dates[0]).days}, so its labels overlap the test window by "
        f"{plan.overlap_days} days"
    )


def _fixed(
    snapshots: SnapshotConfig, span: int, earliest: dt.date, latest: dt.date
) -> tuple[int, int, str | None]:
    """A configured count and spacing, adapted (spacing first, then count) to a short history."""
    assert snapshots.count is not None
    if not snapshots.adapt or (snapshots.count - 1) * snapshots.spacing_days <= span:
        return snapshots.count, snapshots.spacing_days, None
    count, spacing = snapshots.count, span // (snapshots.count - 1)
    if spacing < snapshots.min_spacing_days:
        spacing = min(snapshots.min_spacing_days, span // 2)
        count = max(MIN_SNAPSHOTS, min(snapshots.count, span // spacing + 1))
    note = (
        f"{snapshots.count} snapshots {snapshots.spacing_days} days apart do not fit in the "
        f"{span} days between {earliest} (the first event the features and the outcome use + "
        f"{snapshots.min_history_days} days of history) and {latest}; using {count} snapshots "
        f"{spacing} days apart"
    )
    return count, spacing, note


def _last_season(
    dates: list[dt.date],
    snapshots: SnapshotConfig,
    earliest: dt.date,
    estimate: RowEstimate | None,
    estimated: dict[dt.date, int],
    horizon_days: int,
    sampled: SampledBuild | None,
) -> tuple[int, list[dt.date], list[str]]:
    """(how many of the newest dates get last year's date, the dates that adds, notes): as many
    as ``snapshots.seasonal`` asks whose date 52 weeks before has ``earliest`` (its history)
    behind it and whose rows fit the row budget (``estimated`` gains their estimates)."""
    asked = min(snapshots.seasonal, len(dates))
    reach = 0
    while reach < asked and season_before(dates, reach + 1)[0] >= earliest:
        reach += 1
    notes = []
    if reach < asked:
        notes.append(
            f"training.snapshots.seasonal {snapshots.seasonal}: the history (the first usable date is "
            f"{earliest}) reaches 52 weeks before the newest {reach} snapshot(s) only"
        )
    added = [d for d in season_before(dates, reach) if d not in dates]
    if estimate is None or not added:
        return reach, added, notes
    estimated.update(estimate(added))
    kept = reach
    while kept > 0 and _rows(sorted([*dates, *added]), estimated, horizon_days, sampled) > snapshots.max_rows:
        kept -= 1
        added = [d for d in season_before(dates, kept) if d not in dates]
    if kept < reach:
        notes.append(
            f"the row budget (training.snapshots.max_rows {snapshots.max_rows:,}) keeps last year's date of "
            f"the newest {kept} of the {reach} snapshots training.snapshots.seasonal asks for"
        )
    return kept, added, notes


def _rows(
    kept: list[dt.date], estimated: dict[dt.date, int], horizon_days: int, sampled: SampledBuild | None
) -> int:
    """The estimated rows ``kept`` builds (sampled when ``sampled``)."""
    if sampled is None:
        return sum(estimated.get(d, 0) for d in kept)
    return sampled.built(
        kept, estimated, kept[validation_index(kept, horizon_days)] if len(kept) > 1 else kept[0]
    )


def _within_budget(
    dates: list[dt.date],
    estimated: dict[dt.date, int],
    budget: int,
    horizon_days: int,
    spacing: int,
    sampled: SampledBuild | None = None,
) -> tuple[list[dt.date], str | None]:
    """The newest dates whose rows built (estimated; sampled when ``sampled``) fit ``budget``;
    never fewer than a test, a clean validation and one training snapshot (or 3) need."""
    needed = max(MIN_SNAPSHOTS, -(-horizon_days // spacing) + 2)
    kept, total = 0, 0
    for i in reversed(range(len(dates))):
        more = _rows(dates[i:], estimated, horizon_days, sampled)
        if kept >= needed and more > budget:
            break
        kept, total = kept + 1, more
    if kept == len(dates):
        return dates, None
    cut = dates[: len(dates) - kept]
    left_out = sum(estimated.get(d, 0) for d in cut)
    in_kept = sum(estimated.get(d, 0) for d in dates[-kept:])
    # Within sampling.rows every row is built: the note reads as unsampled.
    sampling = sampled is not None and in_kept > sampled.rows
    built = f" built by training.sampling, of ~{in_kept:,} estimated" if sampling else ""
    return dates[-kept:], (
        f"the row budget (training.snapshots.max_rows {budget:,}) keeps the newest {kept} snapshots "
        f"(~{total:,} rows{built}); {len(cut)} older ones ({cut[0]} .. {cut[-1]}, ~{left_out:,} rows) "
        "are left out"
    )
