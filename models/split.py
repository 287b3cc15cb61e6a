"""The out-of-time, profile-disjoint split of stacked labelled snapshots.

The latest snapshot is the test set, the validation snapshot (the snapshot plan's, or the one
before the test) is for validation, the earlier ones train; a fixed share of profiles (by a
hash of ``profile_id``) is kept for the test snapshot only and another for validation only, so
no profile's snapshots straddle the parts. The validation profiles are halved: early stopping
and search on one half, candidate choice and calibration on the other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from propensity.core.config import TrainingConfig
from propensity.core.errors import UserError
from propensity.core.sampling import profile_fraction


@dataclass
class Split:
    """Rows for each job: train, early stopping, calibration, test."""

    train: pd.DataFrame
    early_stopping: pd.DataFrame  # validation half 1: early stopping, search, strength
    calibration: pd.DataFrame  # validation half 2: candidate choice, calibration
    test: pd.DataFrame
    train_rows_before_sample: int | None = None  # set when training.max_training_rows cut it

    def summary(self) -> dict:
        """Rows, positives and dates of each part, for the run's record."""

        def part(frame: pd.DataFrame) -> dict:
            return {
                "rows": len(frame),
                "positives": int(frame["label"].sum()),
                "as_of": sorted({str(d.date()) for d in pd.to_datetime(frame["as_of"])}),
            }

        parts = {
            name: part(getattr(self, name)) for name in ("train", "early_stopping", "calibration", "test")
        }
        if self.train_rows_before_sample is not None:
            parts["train"]["sampled_from"] = self.train_rows_before_sample
        return parts


# Each validation half should hold this many of the rarer outcome; with less data the
# validation share grows (up to MAX_VALIDATION_SHARE) rather than leave early stopping, the
# search and calibration a handful of positives to go on.
MIN_MINORITY_PER_HALF = 25
MAX_VALIDATION_SHARE = 0.6


def validation_share(labels: pd.Series, training: TrainingConfig) -> float:
    """The share of non-test profiles kept for validation, given the validation snapshot's
    labels: the configured share, or more when the rarer outcome is scarce."""
    return validation_share_of(float(labels.sum()), float(len(labels)), training)


def validation_share_of(positives: float, rows: float, training: TrainingConfig) -> float:
    """:func:`validation_share` from the validation snapshot's (weighted) positives and rows."""
    minority = min(positives, rows - positives)
    needed = 2 * MIN_MINORITY_PER_HALF / max(minority, 1)
    return float(min(max(training.validation_profile_fraction, needed), MAX_VALIDATION_SHARE))


def split(
    frame: pd.DataFrame,
    training: TrainingConfig,
    valid_date: dt.date | None = None,
    share: float | None = None,
) -> Split:
    """Out-of-time and profile-disjoint split of stacked, labelled snapshots.

    ``valid_date``: the validation snapshot (the snapshot plan's: the last whose labels end by
    the test date); None: the one before the test snapshot. Snapshots between it and the test
    snapshot are in no part (the refit uses them). ``share``: the validation profiles' share
    when the rows were chosen before their labels were known (sampled training); None: from
    the validation snapshot's labels (:func:`validation_share`).

    Profiles fall in three groups by a hash: test profiles appear only in the latest
    snapshot, validation profiles only in the validation snapshot, training profiles only in
    the earlier ones. Validation must be profile-disjoint from training too: a profile's
    consecutive snapshots share most of their outcome window, so a model that memorises
    training profiles looks better on their later snapshot than it is on new ones (which
    made early stopping run for thousands of rounds on real purchase data).
    """
    dates = sorted(frame["as_of"].unique())
    if len(dates) < 3:
        raise UserError(
            f"need at least 3 snapshots with a population to train (training, validation, test), got "
            f"{len(dates)}: {', '.join(str(pd.Timestamp(d).date()) for d in dates) or 'none'}"
        )
    test_date = dates[-1]
    if valid_date is not None:
        matching = [d for d in dates[:-1] if pd.Timestamp(d).date() == valid_date]
        if not matching:
            raise UserError(f"the validation snapshot {valid_date} has no population rows")
        valid_date = matching[0]
    valid_date = dates[-2] if valid_date is None else valid_date
    held_out = profile_fraction(frame["profile_id"], f"test-{training.seed}") < training.test_profile_fraction
    if share is None:
        share = validation_share(frame["label"][(frame["as_of"] == valid_date) & ~held_out], training)
    validating = (profile_fraction(frame["profile_id"], f"validation-{training.seed}") < share) & ~held_out
    halves = profile_fraction(frame["profile_id"], f"calibration-{training.seed}") < 0.5
    in_train = (frame["as_of"] < valid_date) & ~held_out & ~validating
    valid = (frame["as_of"] == valid_date) & validating
    train, before = sample_by_label(frame[in_train], training.max_training_rows, training.seed)
    result = Split(
        train=train,
        early_stopping=frame[valid & halves],
        calibration=frame[valid & ~halves],
        test=frame[(frame["as_of"] == test_date) & held_out],
        train_rows_before_sample=before,
    )
    _check_counts(result, training)
    return result


def sample_by_label(frame: pd.DataFrame, max_rows: int, seed: int) -> tuple[pd.DataFrame, int | None]:
    """At most ``max_rows`` rows, the same share of each label, in their original order:
    (rows, rows before sampling or None when nothing was cut). Only training rows are
    sampled; validation and test keep every profile, so their figures are not thinned."""
    if len(frame) <= max_rows:
        return frame, None
    share = max_rows / len(frame)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(frame), dtype=bool)
    labels = frame["label"].to_numpy()
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        keep[rng.choice(rows, size=round(len(rows) * share), replace=False)] = True
    return frame[keep], len(frame)


def _check_counts(parts: Split, training: TrainingConfig) -> None:
    y = parts.train["label"]
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives < training.min_positives or negatives < training.min_negatives:
        raise UserError(
            f"too few examples to train: {positives} positives and {negatives} negatives in the training "
            f"snapshots (need {training.min_positives} and {training.min_negatives}); use more data, a wider "
            f"population or lower training.min_positives / min_negatives"
        )
    for name in ("early_stopping", "calibration", "test"):
        labels = getattr(parts, name)["label"]
        if labels.sum() < 10 or (len(labels) - labels.sum()) < 10:
            raise UserError(
                f"too few positives or negatives in the {name.replace('_', '-')} set "
                f"({int(labels.sum())} positives of {len(labels)} rows; 10 of each needed) to train and "
                f"evaluate reliably"
            )
