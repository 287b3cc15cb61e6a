"""BG/NBD as a served model: the probability of a purchase within the horizon, with exact factors.

The model reads three features (:data:`propensity.models.baselines.BGNBD_FEATURES`): repeat
purchase days, days since the first and since the last purchase. Its raw score is the log-odds
of :meth:`propensity.models.bgnbd.BgNbd.purchase_probability` (of no purchase, for an outcome
that must not occur), kept off 0 and 1 by :data:`PROBABILITY_FLOOR`; a Platt calibrator on the
validation rows turns it into the horizon's probability on this population (BG/NBD is fitted
on one snapshot's purchase histories, not on the labels).

Contributions are exact Shapley values of the raw score over the three features against one
reference profile (the training rows' medians): with three players every coalition is evaluated
(eight calls of the closed form), so a row's contributions plus the bias (the reference's raw
score) add up to its raw score exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.config import OutcomeConfig
from propensity.core.sampling import row_weights
from propensity.models.baselines import BGNBD_FEATURES, bgnbd_inputs
from propensity.models.bgnbd import BgNbd, fit_bgnbd
from propensity.models.calibration import Calibrator
from propensity.models.estimator import feature_matrix
from propensity.models.linear import AdditiveBooster, top_k_columns

# Rows without a purchase history get BG/NBD's lowest chance; the floor keeps the log-odds finite.
PROBABILITY_FLOOR = 1e-4
# BG/NBD's four parameters are fitted on at most this many customers (a seeded sample): the
# maximum-likelihood fit costs a few seconds per 100k rows and gains nothing beyond.
MAX_FIT_ROWS = 50_000


@dataclass
class BgNbdPropensityModel:
    """Fitted BG/NBD parameters with the feature contract and calibrator of the other families."""

    name: str
    feature_names: list[str]  # the three BG/NBD inputs, in BGNBD_FEATURES order
    feature_labels: dict[str, str]
    parameters: np.ndarray  # r, alpha, a, b (days)
    horizon_days: float
    occurs: bool
    reference: np.ndarray  # the background profile of the Shapley values, per feature
    calibrator: Calibrator
    categories: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def booster(self) -> BgNbdBooster:
        """Booster-shaped access (``predict``, ``feature_importance``) for code written for trees."""
        return BgNbdBooster(self)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The three input columns as float64."""
        return feature_matrix(frame, self.feature_names, {})

    def used_features(self) -> list[str]:
        """All three inputs."""
        return list(self.feature_names)

    def _raw(self, values: np.ndarray) -> np.ndarray:
        """Raw log-odds of rows of (purchase_days, days_since_first, days_since_last)."""
        frame = pd.DataFrame(values, columns=list(BGNBD_FEATURES))
        x, t_x, T, usable = bgnbd_inputs(frame)
        r, alpha, a, b = (float(v) for v in self.parameters)
        probability = BgNbd(r, alpha, a, b).purchase_probability(x, t_x, T, self.horizon_days)
        probability = np.where(usable, probability, 0.0)
        if not self.occurs:
            probability = 1.0 - probability
        probability = np.clip(probability, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
        return np.log(probability) - np.log1p(-probability)

    def _inputs(self, frame: pd.DataFrame) -> np.ndarray:
        """The matrix's columns in BGNBD_FEATURES order (the model's feature order is that order)."""
        return self.matrix(frame).to_numpy(dtype=np.float64)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds of the outcome."""
        return self._raw(self._inputs(frame))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the outcome."""
        return self.calibrator.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Exact Shapley values of the raw score (rows, 3 + 1) against :attr:`reference`; the last
        column is the bias (the reference's raw score)."""
        return shapley_against_reference(self._raw, self._inputs(frame), self.reference)

    def top_contributions(self, matrix: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row the ``k`` inputs of largest |contribution|, strongest first."""
        return top_k_columns(self.contributions(matrix)[:, :-1], k)

    def predict_and_explain(self, table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities and the ``k`` strongest contributions of an Arrow feature table."""
        frame = table.select(self.feature_names).to_pandas()
        probability = self.calibrator.transform(self.raw_score(frame))
        indices, impacts = top_k_columns(self.contributions(frame)[:, :-1], k)
        return probability, indices, impacts

    def save(self, path: str | Path) -> Path:
        """Write the model without pickle (:func:`propensity.models.estimator.save_model`)."""
        from propensity.models.estimator import save_model

        return save_model(self, path)


class BgNbdBooster(AdditiveBooster):
    """BG/NBD through the ``Booster`` interface (:class:`~propensity.models.linear.AdditiveBooster`)."""

    def feature_importance(self, importance_type: str = "gain") -> np.ndarray:
        """No gain to report: one per input (each is read by the closed form)."""
        return np.ones(len(self.model.feature_names))


def shapley_against_reference(function, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Exact Shapley values of ``function`` (rows (n, m) -> (n,)) at ``values`` against one
    ``reference`` row: every coalition evaluated, so only for a handful of inputs. Returns
    (n, m + 1), the last column ``function(reference)``; each row sums to ``function(row)``."""
    n, m = values.shape
    outputs = {}
    for size in range(m + 1):
        for coalition in combinations(range(m), size):
            mixed = np.repeat(reference[None, :], n, axis=0)
            mixed[:, list(coalition)] = values[:, list(coalition)]
            outputs[frozenset(coalition)] = function(mixed)
    out = np.zeros((n, m + 1))
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for coalition in combinations(others, size):
                with_i = outputs[frozenset(coalition) | {i}]
                out[:, i] += weight * (with_i - outputs[frozenset(coalition)])
    out[:, m] = outputs[frozenset()]
    return out


def bgnbd_applies(event_type: str, category: str | None, min_revenue, above_average: bool) -> bool:
    """BG/NBD models any next purchase: only outcomes that are exactly that."""
    return event_type == "purchase" and not (category or min_revenue is not None or above_average)


def fit_bgnbd_model(
    train: pd.DataFrame,
    feature_labels: dict[str, str],
    name: str,
    horizon_days: float,
    occurs: bool,
    seed: int,
) -> BgNbdPropensityModel | None:
    """BG/NBD fitted on the latest training snapshot's purchase histories (a seeded sample of at
    most :data:`MAX_FIT_ROWS`), uncalibrated (``none``: the caller fits the calibrator). None when
    the features are missing or most rows have no purchase to learn a rhythm from."""
    if any(c not in train.columns for c in BGNBD_FEATURES):
        return None
    latest = train[train["as_of"] == train["as_of"].max()]
    if len(latest) > MAX_FIT_ROWS:
        latest = latest.sample(MAX_FIT_ROWS, random_state=seed)
    x, t_x, T, usable = bgnbd_inputs(latest)
    if usable.mean() < 0.5 or usable.sum() < 50:
        return None
    weights = row_weights(latest)
    fitted = fit_bgnbd(x[usable], t_x[usable], T[usable], None if weights is None else weights[usable])
    inputs = feature_matrix(latest[usable], list(BGNBD_FEATURES), {}).to_numpy(dtype=np.float64)
    return BgNbdPropensityModel(
        name=name,
        feature_names=list(BGNBD_FEATURES),
        feature_labels={c: feature_labels.get(c, c) for c in BGNBD_FEATURES},
        parameters=np.array([fitted.r, fitted.alpha, fitted.a, fitted.b]),
        horizon_days=float(horizon_days),
        occurs=occurs,
        reference=np.nanmedian(inputs, axis=0),
        calibrator=Calibrator("none"),
    )


def bgnbd_candidate(
    train: pd.DataFrame,
    names: list[str],
    labels: dict[str, str],
    name: str,
    outcome: OutcomeConfig | None,
    seed: int,
) -> tuple[BgNbdPropensityModel, dict, dict] | str:
    """The BG/NBD family for the candidate search: (model, its parameters, details), or why it
    does not apply (not a plain purchase outcome, its features not among the model's, or most
    training profiles without a purchase history)."""
    if outcome is None or not bgnbd_applies(
        outcome.event_type, outcome.category, outcome.min_revenue, outcome.above_average_order_value
    ):
        return "the outcome is not any next purchase"
    if any(c not in names for c in BGNBD_FEATURES):
        return f"the model lacks its features ({', '.join(BGNBD_FEATURES)})"
    model = fit_bgnbd_model(train, labels, name, outcome.horizon_days, outcome.occurs, seed)
    if model is None:
        return "most training profiles have no purchase history"
    r, alpha, a, b = (float(v) for v in model.parameters)
    return model, {"r": r, "alpha": alpha, "a": a, "b": b}, {}
