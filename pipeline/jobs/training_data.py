"""What a train run starts from, fits and measures: a model's stacked labelled snapshots on
the events' engine (:class:`TrainingData`), the fitted split and candidates, and the chosen
model's figures on the test snapshot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.population import population_rule
from propensity.features.build.selection import categories_source, feature_count_note, model_features
from propensity.features.build.snapshots import windows_before_data
from propensity.features.engine import Events
from propensity.models.refit import Refit
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import feature_set
from propensity.pipeline.jobs.plan import make_plan, planned, settle


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
    sampling: dict[str, Any] | None = None  # how the rows were drawn (Spark), for the run's record
    feature_note: str = ""  # what the feature count is made of
    warnings: list[str] = field(default_factory=list)

    @property
    def snapshot_note(self) -> str | None:
        """Why the plan differs from the config, if it does."""
        return "; ".join(self.plan.notes) or None

    def plan_table(self) -> pd.DataFrame:
        """The plan's dates with their roles, estimated rows, population and positives."""
        return self.plan.table(self.frame)


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


def training_data(
    model_name: str, loaded: Events, config: ProjectConfig, as_of: dt.date | None
) -> TrainingData:
    """The model's stacked labelled snapshots on the events' engine (each date's profiles as the
    identity graph knew them then; on Spark a sample of at most ``training.max_training_rows``
    rows, the same share of each label)."""
    span = loaded.span()
    if span is None:
        raise UserError("no events to train on")
    cutoff = as_of or span[1]
    model_cfg = load_model_config(model_name, config)
    plan = make_plan(model_cfg, loaded, cutoff)
    model_cfg = planned(model_cfg, plan)
    fs = feature_set(loaded, config, before=plan.dates[0])
    # A bad rule or feature name fails before any heavy work.
    population_rule(model_cfg, fs)
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    rows = loaded.training_rows(fs, model_cfg, cutoff)
    first_date = plan.dates[0]
    plan = settle(plan, rows.frame, model_cfg)
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
        feature_count_note(fs, len(labels), categories_source(config.features.categories, first_date)),
        [f"earliest training snapshot: {window}"] if window else [],
    )
