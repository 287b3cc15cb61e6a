"""What a train run starts from, fits and measures: a model's stacked labelled snapshots on
the events' engine (:func:`training_data`: the snapshot plan, the feature set, the rows, as
:class:`TrainingData`), the fitted split and candidates, and the chosen model's figures on the
test snapshot.

When the train job samples: the snapshot plan estimates each date's rows before any feature is
built; when they add up to more than ``training.sampling.rows``, the engine is asked for the
rows a :class:`~propensity.features.build.training_sample.RowChoice` chooses (with their
weights, labels first, features for the chosen rows only) instead of every row. What was drawn
is printed with the plan and logged with the run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.core.sampling import WEIGHT, profile_fraction
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.population import population_rule
from propensity.features.build.selection import model_columns
from propensity.features.build.snapshots import history_event_types, windows_before_data
from propensity.features.build.training_sample import RowChoice
from propensity.features.engine import Events, TrainingRows
from propensity.models.refit import Refit
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.models.split import validation_share_of
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import training_feature_set
from propensity.pipeline.jobs.plan import describe, make_plan


@dataclass(frozen=True)
class TrainingData:
    """What fitting starts from: stacked labelled snapshots and how they were built."""

    model: ModelConfig  # with its snapshot plan adapted to the span of the events
    fs: FeatureSet
    labels: dict[str, str]  # model feature name -> label
    frame: pd.DataFrame
    dates: list[dt.date]
    cutoff: dt.date
    events_display: str
    plan: SnapshotPlan
    sampling: dict[str, Any] | None = None  # how the rows were drawn, for the run's record
    feature_note: str = ""  # what the feature count is made of
    warnings: list[str] = field(default_factory=list)
    validation_share: float | None = None  # sampled training: the validation profiles' share

    @property
    def snapshot_note(self) -> str | None:
        """Why the plan differs from the config, if it does."""
        return "; ".join(self.plan.notes) or None

    def plan_text(self) -> str:
        """The plan for people, with how the rows were sampled when they were."""
        note = sampling_note(self.sampling)
        return describe(self.plan, self.plan_table()) + (f"\n{note}" if note else "")

    def plan_table(self) -> pd.DataFrame:
        """The plan's dates with their roles, estimated rows, population and positives."""
        return self.plan.table(self.frame)


def training_data(
    model_name: str, loaded: Events, config: ProjectConfig, as_of: dt.date | None
) -> TrainingData:
    """The model's stacked labelled snapshots on the events' engine (each date's profiles as the
    identity graph knew them then; on Spark a sample of at most ``training.max_training_rows``
    rows, the same share of each label)."""
    model_cfg = load_model_config(model_name, config)
    history = loaded.history(history_event_types(model_cfg.outcome.event_type))
    span = history.span
    if span is None:
        raise UserError("no events to train on")
    cutoff = as_of or span[1]
    plan = make_plan(model_cfg, loaded, cutoff, history)
    model_cfg = plan.planned(model_cfg)
    fs = training_feature_set(loaded, config, model_cfg, plan.dates)
    # A bad rule or feature name fails before any heavy work.
    population_rule(model_cfg, fs)
    labels, note = model_columns(fs, model_cfg, config.features.categories, plan.dates[0])
    rows, choice = training_rows(loaded, fs, model_cfg, cutoff, plan)  # labels first when too many
    plan = plan.settle(rows.frame, model_cfg)
    if choice is not None:
        check_validation_date(choice, plan.validation, model_cfg)
    window = windows_before_data(config.features.windows_days, span[0], plan.dates[0])
    return TrainingData(
        model_cfg,
        fs,
        labels,
        rows.frame,
        rows.dates,
        cutoff,
        loaded.inputs.display,
        plan,
        rows.sampling,
        note,
        [f"earliest training snapshot: {window}"] if window else [],
        choice.validation_share if choice is not None else None,
    )


def row_choice(model_cfg: ModelConfig, plan: SnapshotPlan) -> RowChoice | None:
    """The sampled training's choice when the plan's estimated rows exceed
    ``training.sampling.rows``; None: every row is built (always for uplift models)."""
    training = model_cfg.training
    estimated = sum(plan.estimated_rows.get(d, 0) for d in plan.dates)
    # Uplift models compare treated and control rates and read no weights: every row.
    if estimated <= training.sampling.rows or model_cfg.treatment is not None:
        return None
    return RowChoice(
        test=plan.test,
        validation=plan.validation,
        seed=training.seed,
        test_fraction=training.test_profile_fraction,
        # The labels are not known yet: the configured share, checked once they are.
        validation_share=training.validation_profile_fraction,
        rows=training.sampling.rows,
        min_rate=training.sampling.min_rate,
        partition_rows=training.sampling.partition_rows,
    )


def training_rows(
    loaded: Events, fs: FeatureSet, model_cfg: ModelConfig, cutoff: dt.date, plan: SnapshotPlan
) -> tuple[TrainingRows, RowChoice | None]:
    """The plan's labelled rows: all of them, or those :func:`row_choice` chooses. The rows are
    chosen with the configured validation share; when their labels show that the split would
    widen it (a scarce outcome at the validation snapshot), they are chosen again with the wider
    share, so that the validation profiles are whole at the validation snapshot either way."""
    choice = row_choice(model_cfg, plan)
    rows = loaded.training_rows(fs, model_cfg, cutoff, choice)
    if choice is None or WEIGHT not in rows.frame.columns:  # every row, or the engine's own sample
        return rows, None
    share = needed_share(rows.frame, choice, model_cfg)
    if share > choice.validation_share:
        choice = dataclasses.replace(choice, validation_share=share)
        rows = loaded.training_rows(fs, model_cfg, cutoff, choice)
    record = {**(rows.sampling or {}), "sample_validation_share": round(choice.validation_share, 4)}
    return dataclasses.replace(rows, sampling=record), choice


def needed_share(frame: pd.DataFrame, choice: RowChoice, model_cfg: ModelConfig) -> float:
    """The validation share the split would take from the validation snapshot's labels (weighted
    estimates of its positives and rows, the held-out profiles left out)."""
    training = model_cfg.training
    at_valid = pd.to_datetime(frame["as_of"]).dt.date.to_numpy() == choice.validation
    held_out = profile_fraction(frame["profile_id"], f"test-{training.seed}") < training.test_profile_fraction
    rows = frame[at_valid & ~held_out]
    weights = rows[WEIGHT].to_numpy(dtype=float)
    return validation_share_of(
        float(np.sum(weights * rows["label"].to_numpy())), float(np.sum(weights)), training
    )


def check_validation_date(choice: RowChoice, validation: dt.date, model_cfg: ModelConfig) -> None:
    """Refuse a sample chosen for another validation date than the settled plan's (leading
    snapshots without population moved it): its validation profiles would not be whole."""
    if validation != choice.validation:
        raise UserError(
            f"model '{model_cfg.name}': the rows were sampled for validation at {choice.validation}, but the "
            f"settled plan validates at {validation} (early snapshots had no population); raise "
            f"training.sampling.rows above the plan's estimated rows to build every row"
        )


def sampling_note(sampling: dict | None) -> str | None:
    """The sampling for people (None when every row was built or the engine sampled by label)."""
    if not sampling or "sample_rate" not in sampling:
        return None
    return (
        f"sampled: features built for {sampling['sample_rows']:,} rows in {sampling['sample_partitions']} "
        f"partition(s): the test snapshot's held-out profiles and the validation snapshot's validation "
        f"profiles whole ({sampling['sample_whole_rows']:,} rows), every other row that may be positive "
        f"({sampling['sample_maybe_positive_rows']:,}), and the negatives of a seeded sample of profiles at "
        f"rate {sampling['sample_rate']:.4f} of {sampling['sample_negative_rows_available']:,} "
        f"(weight {1 / sampling['sample_rate']:.2f} each); validation share "
        f"{sampling.get('sample_validation_share', 0):.2f}"
    )


@dataclass
class Fitted:
    """The split, every candidate and the chosen one, and the refit."""

    parts: Any  # the split: train / valid / test
    trained: Any  # every candidate and the chosen one
    fit_seconds: float
    refit: Refit | None = None  # the chosen model fitted again on every snapshot before the test


@dataclass
class TestFigures:
    """The chosen model and the baselines on the test snapshot."""

    test: pd.DataFrame
    y: np.ndarray
    p: np.ndarray
    metrics: dict[str, float]
    baselines: dict[str, tuple[np.ndarray, bool]]
    buckets: pd.DataFrame
    deciles: pd.DataFrame
    importance: pd.DataFrame
