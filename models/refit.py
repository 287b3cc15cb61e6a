"""The refit: the model validation chose, fitted again on every labelled snapshot before the
test snapshot with what validation settled (LightGBM's round count and parameters, the
logistic regression's strength and design; BG/NBD on the newest of those snapshots).

The early-stopped fit trains on the snapshots before the validation snapshot only, and
without the validation profiles; the refit adds the validation snapshot, the snapshots
between it and the test snapshot and the validation profiles' rows, so the registered model
has seen the newest labelled behaviour. The test snapshot's profiles never enter it: the test
figures stay those of rows no fit has seen. The calibrator (or ``none``) chosen on validation
is kept: on the rows of a model stopped at the same round count, it measured how the raw
scores map to rates.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from propensity.core.config import TrainingConfig
from propensity.core.sampling import WEIGHT, row_weights
from propensity.models.bgnbd_model import BgNbdPropensityModel, fit_bgnbd_model
from propensity.models.estimator import PropensityModel
from propensity.models.linear import LinearPropensityModel, LogScaledDesign
from propensity.models.split import profile_fraction, sample_by_label
from propensity.models.train import Candidate, Trained


@dataclass(frozen=True)
class Refit:
    """What the refit trained on and with."""

    rows: int
    positives: int
    dates: list[dt.date]
    sampled_from: int | None  # rows before training.max_training_rows cut them
    rounds: int | None  # LightGBM's early-stopped round count
    C: float | None  # the logistic regression's strength
    seconds: float

    def record(self) -> dict:
        """For the model's metadata and the run's record."""
        return {
            "rows": self.rows,
            "positives": self.positives,
            "snapshots": [str(d) for d in self.dates],
            "sampled_from": self.sampled_from,
            "rounds": self.rounds,
            "C": self.C,
        }  # no seconds: the model's bytes must not depend on the machine's speed


def refit_rows(
    frame: pd.DataFrame, training: TrainingConfig, test: dt.date
) -> tuple[pd.DataFrame, int | None]:
    """Every row of the snapshots before ``test`` whose profile is not held out for the test
    snapshot (the split's own hash), sampled by label to ``training.max_training_rows``.

    A sampled frame (:mod:`propensity.features.build.training_sample`) holds the validation
    profiles whole at the validation snapshot, for the validation figures; the refit reads no
    figure off them, so their negatives are thinned as every other negative was
    (:func:`thin_whole_negatives`)."""
    held_out = profile_fraction(frame["profile_id"], f"test-{training.seed}") < training.test_profile_fraction
    before = pd.to_datetime(frame["as_of"]).dt.date < test
    rows = thin_whole_negatives(frame[before.to_numpy() & ~held_out], training.seed)
    return sample_by_label(rows, training.max_training_rows, training.seed)


def thin_whole_negatives(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A sampled frame's negatives of weight 1 (the rows kept whole) drawn as the sample drew
    every other negative: those of the profiles whose ``sample-<seed>`` hash falls below the
    rate, weighted 1 / rate (the weight the sampled negatives carry), so weighted sums stay
    unbiased estimates of the full frame's. Unsampled frames (no weights, or all 1) as they are."""
    weights = row_weights(rows)
    if weights is None or not len(rows) or weights.max() <= 1.0:
        return rows
    sampled_weight = float(weights.max())  # 1 / rate: every sampled negative's weight
    whole_negative = (weights == 1.0) & (rows["label"].to_numpy() == 0)
    drawn = profile_fraction(rows["profile_id"], f"sample-{seed}") < 1.0 / sampled_weight
    out = rows[~whole_negative | drawn].copy()
    out[WEIGHT] = np.where(whole_negative[~whole_negative | drawn], sampled_weight, out[WEIGHT].to_numpy())
    return out


def refit(
    candidate: Candidate, rows: pd.DataFrame, training: TrainingConfig, sampled_from: int | None
) -> Refit:
    """Fit ``candidate``'s model again on ``rows`` in place (its calibrator kept) and record
    how in its metadata."""
    started = time.perf_counter()
    model = candidate.model
    y, weights = rows["label"].to_numpy(), row_weights(rows)  # weights: sampled training
    rounds = C = None
    if isinstance(model, PropensityModel):
        rounds = int(candidate.params["best_iteration"])
        params = {k: v for k, v in candidate.details["lightgbm_params"].items() if k != "num_boost_round"}
        data = lgb.Dataset(
            model.matrix(rows), label=y, weight=weights, params={"feature_pre_filter": False, "verbosity": -1}
        )
        booster = lgb.train(params, data, num_boost_round=max(rounds, 1))
        model.booster_text = booster.model_to_string()
        model._booster = None  # rebuilt from the new text
        model._explainer = None
    elif isinstance(model, LinearPropensityModel):
        C = float(candidate.params["C"])
        matrix = model.matrix(rows)
        model.design = LogScaledDesign.fit(matrix, model.categories)
        fitted = LogisticRegression(C=C, max_iter=2000, random_state=training.seed).fit(
            model.design.transform(matrix), y, sample_weight=weights
        )
        model.coef, model.intercept = fitted.coef_[0].astype(float).copy(), float(fitted.intercept_[0])
    elif isinstance(model, BgNbdPropensityModel):
        # Fitted on purchase histories, not labels: the newest snapshot's histories are longer
        # and closer to the scoring date than the training snapshot's.
        fitted = fit_bgnbd_model(
            rows, model.feature_labels, model.name, model.horizon_days, model.occurs, training.seed
        )
        if fitted is not None:
            model.parameters, model.reference = fitted.parameters, fitted.reference
    else:  # pragma: no cover - every family of FITTERS is handled above
        raise TypeError(f"no refit for {type(model).__name__}")
    dates = sorted({d.date() for d in pd.to_datetime(rows["as_of"])})
    result = Refit(len(rows), int(np.sum(y)), dates, sampled_from, rounds, C, time.perf_counter() - started)
    model.metadata["refit"] = result.record()
    return result


REFITTED_FAMILIES = ("lightgbm", "logistic", "bgnbd")


def refit_trained(
    trained: Trained, rows: pd.DataFrame, training: TrainingConfig, sampled_from: int | None
) -> Refit | None:
    """The shipped model fitted again on ``rows``: the chosen candidate, or each part of a blend
    (its weights, Platt maps and calibrator kept as validation chose them, like a single
    family's calibrator). BG/NBD is fitted again on the newest snapshot of ``rows``: its fit
    reads purchase histories, not labels, and the newest are the longest (on CDNOW, scoring
    1997-07-03 against outcomes to 1997-10-01, BG/NBD alone ranked 0.7372 AUC fitted on that
    date's histories, 0.7283 on those three months earlier). None: nothing to refit."""
    chosen = trained.chosen
    if chosen.family in REFITTED_FAMILIES:
        return refit(chosen, rows, training, sampled_from)
    if chosen.family != "blend":
        return None
    parts = {id(component) for component in chosen.model.components}
    done = [
        refit(c, rows, training, sampled_from)
        for c in trained.candidates
        if c.family in REFITTED_FAMILIES and id(c.model) in parts
    ]
    if not done:
        return None
    rounds = next((d.rounds for d in done if d.rounds is not None), None)
    strength = next((d.C for d in done if d.C is not None), None)
    first = done[0]
    result = Refit(
        first.rows, first.positives, first.dates, sampled_from, rounds, strength, sum(d.seconds for d in done)
    )
    chosen.model.metadata["refit"] = result.record()
    return result
