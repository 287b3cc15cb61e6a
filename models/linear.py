"""A regularised logistic regression on log-scaled features, served like the LightGBM model.

Each numeric feature becomes ``sign(x) * log1p(|x|)``, missing values are filled with the
training median (of the log-scaled value) plus a 0/1 indicator where training had any, and
columns are standardised; categorical features are one-hot over the training categories.
Contributions are exact linear SHAP in log-odds: ``coef * (design - background mean)``, summed
over the design columns of each feature; the last column is the bias, so a row's
contributions add up to its raw score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from propensity.models.calibration import Calibrator
from propensity.models.estimator import feature_matrix

# Inverse regularisation strengths tried on the validation rows (standardised columns).
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def signed_log(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: counts, days and amounts on a scale a linear model can use."""
    return np.sign(values) * np.log1p(np.abs(values))


def top_k_columns(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (rows, features) contribution matrix, the ``k`` columns of largest |value|,
    strongest first (ties by column index, as a stable sort): (indices, impacts), rows x k."""
    k = min(max(k, 0), contributions.shape[1])
    if k == 0:
        return np.zeros((len(contributions), 0), dtype=np.int64), np.zeros((len(contributions), 0))
    strength = np.abs(contributions)
    top = np.argpartition(-strength, k - 1, axis=1)[:, :k]
    # Order only the k chosen, strongest first (ties by feature index, as a stable sort).
    chosen = np.take_along_axis(strength, top, axis=1)
    order = np.lexsort((top, -chosen), axis=1)
    indices = np.take_along_axis(top, order, axis=1)
    return indices, np.take_along_axis(contributions, indices, axis=1)


@dataclass
class LogScaledDesign:
    """How features become design columns; fixed on the training rows."""

    numeric: list[str]
    fills: np.ndarray  # per numeric feature, in log scale
    indicators: list[str]  # numeric features with a missing indicator column
    categories: dict[str, list[str]]  # categorical feature -> its one-hot categories
    centers: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, matrix: pd.DataFrame, categorical: dict[str, list[str]]) -> LogScaledDesign:
        """Fills, indicators and standardisation from the training rows' ``matrix``."""
        numeric = [c for c in matrix.columns if c not in categorical]
        logged = signed_log(matrix[numeric].to_numpy(dtype=float))
        missing = np.isnan(logged)
        with np.errstate(all="ignore"):
            medians = np.nanmedian(np.where(missing.all(axis=0), 0.0, logged), axis=0)
        design = cls(
            numeric=numeric,
            fills=np.nan_to_num(medians),
            indicators=[
                c for c, m in zip(numeric, missing.any(axis=0) & ~missing.all(axis=0), strict=True) if m
            ],
            categories=categorical,
        )
        columns = design._raw(matrix)
        design.centers = columns.mean(axis=0)
        spread = columns.std(axis=0)
        design.scales = np.where(spread > 1e-12, spread, 1.0)
        return design

    def _raw(self, matrix: pd.DataFrame) -> np.ndarray:
        logged = signed_log(matrix[self.numeric].to_numpy(dtype=float))
        missing = np.isnan(logged)
        parts = [np.where(missing, self.fills, logged)]
        if self.indicators:
            parts.append(matrix[self.indicators].isna().to_numpy(dtype=float))
        for column, categories in self.categories.items():
            values = matrix[column].astype("object").to_numpy()
            parts.extend((values == c).astype(float)[:, None] for c in categories)
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(matrix), 0))

    def transform(self, matrix: pd.DataFrame) -> np.ndarray:
        """Standardised design columns (rows x columns) of a model matrix."""
        return (self._raw(matrix) - self.centers) / self.scales

    def column_features(self) -> list[str]:
        """The feature each design column comes from, in column order."""
        out = list(self.numeric) + list(self.indicators)
        for column, categories in self.categories.items():
            out += [column] * len(categories)
        return out


class AdditiveBooster:
    """A model of log-odds seen through the part of LightGBM's ``Booster`` interface that code
    written for trees calls (scoring, explanations, notebooks): ``predict`` with ``raw_score``
    or ``pred_contrib``. The model gives ``raw_score`` and ``contributions``; each family adds
    its own ``feature_importance``."""

    def __init__(self, model) -> None:
        self.model = model

    def predict(
        self, matrix: pd.DataFrame, raw_score: bool = False, pred_contrib: bool = False, **_
    ) -> np.ndarray:
        """Contributions (with ``pred_contrib``), raw log-odds (``raw_score``) or the
        uncalibrated probability, as ``lgb.Booster.predict``."""
        if pred_contrib:
            return self.model.contributions(matrix)
        raw = self.model.raw_score(matrix)
        return raw if raw_score else 1.0 / (1.0 + np.exp(-raw))


class LinearBooster(AdditiveBooster):
    """The linear model through the ``Booster`` interface (:class:`AdditiveBooster`)."""

    def feature_importance(self, importance_type: str = "gain") -> np.ndarray:
        """Per feature, the sum of |coefficient| over its standardised design columns (the
        log-odds a one-standard-deviation change moves): the linear counterpart of gain."""
        return np.abs(self.model.coef) @ self.model._column_to_feature()


@dataclass
class LinearPropensityModel:
    """Logistic regression with its feature contract and calibrator; the interface of
    :class:`propensity.models.estimator.PropensityModel`, picklable with joblib."""

    name: str
    feature_names: list[str]
    feature_labels: dict[str, str]
    categories: dict[str, list[str]]
    design: LogScaledDesign
    coef: np.ndarray  # per design column
    intercept: float
    calibrator: Calibrator
    metadata: dict = field(default_factory=dict)

    @property
    def booster(self) -> LinearBooster:
        """Booster-shaped access for code written against LightGBM (see :class:`LinearBooster`)."""
        return LinearBooster(self)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's columns, numeric as float64, categoricals with the training categories."""
        return feature_matrix(frame, self.feature_names, self.categories)

    def used_features(self) -> list[str]:
        """Every feature: the design imputes and scales each one, so all are read."""
        return list(self.feature_names)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds."""
        return self._raw_from_matrix(self.matrix(frame))

    def _raw_from_matrix(self, matrix: pd.DataFrame) -> np.ndarray:
        # Each row summed on its own, in column order: a BLAS product's result for one row depends
        # on the rows batched with it, so a profile's score changed (by 1e-16) with its chunk.
        design = np.ascontiguousarray(self.design.transform(matrix), dtype=np.float64)
        return (design * self.coef).sum(axis=1) + self.intercept

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the outcome."""
        return self.calibrator.transform(self.raw_score(frame))

    def _column_to_feature(self) -> np.ndarray:
        """0/1 matrix (design columns x features): which feature each column belongs to."""
        index = {name: i for i, name in enumerate(self.feature_names)}
        columns = self.design.column_features()
        out = np.zeros((len(columns), len(self.feature_names)))
        out[np.arange(len(columns)), [index[c] for c in columns]] = 1.0
        return out

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Exact linear SHAP in log-odds (rows, features + 1); the last column is the bias.

        Design columns are centred on the training rows, so the background mean is 0 and a
        feature's contribution is ``coef * design`` summed over its columns.
        """
        terms = self.design.transform(self.matrix(frame)) * self.coef
        bias = np.full((len(frame), 1), self.intercept)
        return np.concatenate([terms @ self._column_to_feature(), bias], axis=1)

    def top_contributions(self, matrix: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the ``k`` features of largest |contribution|, strongest first:
        (indices rows x k, impacts rows x k). ``matrix`` is :meth:`matrix`'s output."""
        return top_k_columns(self.contributions(matrix)[:, :-1], k)

    def predict_and_explain(self, table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities and the ``k`` strongest contributions of an Arrow feature table
        (the interface of :meth:`propensity.models.estimator.PropensityModel.predict_and_explain`)."""
        matrix = self.matrix(table.to_pandas())
        probability = self.calibrator.transform(self._raw_from_matrix(matrix))
        if k <= 0:
            return probability, np.zeros((len(matrix), 0), np.int32), np.zeros((len(matrix), 0))
        indices, impacts = self.top_contributions(matrix, k)
        return probability, indices, impacts

    def save(self, path: str | Path) -> Path:
        """Write the model to one file without pickle (:func:`estimator.save_model`)."""
        from propensity.models.estimator import save_model

        return save_model(self, path)

    @staticmethod
    def load(path: str | Path) -> LinearPropensityModel:
        """Read a model written by :meth:`save`, or pickled by an earlier release (restricted)."""
        from propensity.models.estimator import load_model

        return load_model(path)


@dataclass(frozen=True)
class LinearFit:
    """A fitted logistic regression and the validation log loss of each strength tried."""

    model: LinearPropensityModel
    C: float
    validation_log_loss: dict[float, float]


def fit_linear(
    train_matrix: pd.DataFrame,
    y_train: np.ndarray,
    valid_matrix: pd.DataFrame,
    y_valid: np.ndarray,
    draft: LinearPropensityModel,
    seed: int,
    sample_weight: np.ndarray | None = None,
) -> LinearFit:
    """L2 logistic regression on ``draft``'s design, strength chosen by validation log loss.

    ``draft`` carries the names, design and calibrator; its coefficients are set here.
    No class weights: probabilities must stay honest. ``sample_weight``: sampled training
    rows' weights (1 / their sampling rate, :mod:`propensity.core.sampling`), which keep them so.
    """
    X_train, X_valid = draft.design.transform(train_matrix), draft.design.transform(valid_matrix)
    losses: dict[float, float] = {}
    coefficients: dict[float, tuple[np.ndarray, float]] = {}
    # Strengths in increasing order, each fit starting from the previous solution.
    fitted = LogisticRegression(max_iter=2000, random_state=seed, warm_start=True)
    for C in sorted(C_GRID):
        fitted.set_params(C=C).fit(X_train, y_train, sample_weight=sample_weight)
        losses[C] = float(log_loss(y_valid, fitted.predict_proba(X_valid)[:, 1], labels=[0, 1]))
        coefficients[C] = (fitted.coef_[0].astype(float).copy(), float(fitted.intercept_[0]))
    C = min(losses, key=losses.get)
    draft.coef, draft.intercept = coefficients[C]
    return LinearFit(draft, C, losses)
