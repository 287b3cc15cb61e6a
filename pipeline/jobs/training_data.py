"""What a train run starts from, fits and measures: a model's stacked labelled snapshots on
the events' engine (:class:`TrainingData`, built by the train job), the fitted split and
candidates, and the chosen model's figures on the test snapshot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.features.build.feature_set import FeatureSet
from propensity.models.refit import Refit
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.pipeline.jobs.plan import describe
from propensity.pipeline.jobs.sampling import sampling_note


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
