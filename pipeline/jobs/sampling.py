"""When and how the train job samples: labels first, features for the chosen rows only.

The snapshot plan estimates each date's rows before any feature is built; when they add up to
more than ``training.sampling.rows``, the engine is asked for the rows a
:class:`~propensity.features.build.training_sample.RowChoice` chooses (with their weights)
instead of every row. What was drawn is printed with the plan and logged with the run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.core.sampling import WEIGHT, profile_fraction
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.training_sample import RowChoice
from propensity.features.engine import Events, TrainingRows
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.models.split import validation_share_of


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
