"""When and how the train job samples: labels first, features for the chosen rows only.

The snapshot plan estimates each date's rows before any feature is built; when they add up to
more than ``training.sampling.rows``, the engine is asked for the rows a
:class:`~propensity.features.build.training_sample.RowChoice` chooses (with their weights)
instead of every row. What was drawn is printed with the plan and logged with the run.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.core.sampling import WEIGHT, profile_fraction
from propensity.features.build.training_sample import RowChoice
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.models.train import validation_share_of


def row_choice(model_cfg: ModelConfig, plan: SnapshotPlan) -> RowChoice | None:
    """The sampled training's choice when the plan's estimated rows exceed
    ``training.sampling.rows``; None: every row is built."""
    training = model_cfg.training
    estimated = sum(plan.estimated_rows.get(d, 0) for d in plan.dates)
    if estimated <= training.sampling.rows:
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


def check_choice(frame: pd.DataFrame, choice: RowChoice, validation: dt.date, model_cfg: ModelConfig) -> None:
    """Refuse a sample the split would read differently: the plan's validation date moved when
    it settled, or the validation snapshot's rarer outcome is so scarce that the split would
    widen the validation share beyond the one the rows were chosen with."""
    if validation != choice.validation:
        raise UserError(
            f"model '{model_cfg.name}': the rows were sampled for validation at {choice.validation}, but the "
            f"settled plan validates at {validation} (early snapshots had no population); raise "
            f"training.sampling.rows above the plan's estimated rows to build every row"
        )
    training = model_cfg.training
    at_valid = pd.to_datetime(frame["as_of"]).dt.date.to_numpy() == validation
    held_out = profile_fraction(frame["profile_id"], f"test-{training.seed}") < training.test_profile_fraction
    rows = frame[at_valid & ~held_out]
    weights = rows[WEIGHT].to_numpy(dtype=float)
    positives, total = float(np.sum(weights * rows["label"].to_numpy())), float(np.sum(weights))
    share = validation_share_of(positives, total, training)
    if share > choice.validation_share:
        raise UserError(
            f"model '{model_cfg.name}': the validation snapshot {validation} has about {positives:,.0f} "
            f"positives of {total:,.0f} rows, too few for the sampled rows' validation share "
            f"{choice.validation_share:.2f} "
            f"(it needs {share:.2f}); raise training.sampling.rows above the plan's estimated rows to build "
            f"every row, or raise training.validation_profile_fraction to {share:.2f}"
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
        f"(weight {1 / sampling['sample_rate']:.2f} each)"
    )
