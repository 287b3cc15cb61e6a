"""The convex blend of the model families: ``w1 * logistic + w2 * Platt(BG/NBD) + w3 * LightGBM``.

Blended in **log-odds**: each family's raw log-odds first goes through its own affine map
(Platt scaling ``slope * raw + offset`` fitted on the validation rows, or the identity when
the family kept its own probabilities), then the blend's raw score is the weighted sum
``sum_i w_i * (slope_i * raw_i + offset_i)`` with ``w_i >= 0`` and ``sum w_i = 1``. Because
every step is affine in each family's raw score, the factors are exact too: a feature's
contribution to the blend is ``sum_i w_i * slope_i * contribution_i`` (exact TreeSHAP for
LightGBM, exact linear SHAP for the logistic regression, exact Shapley values for BG/NBD) and
the bias is ``sum_i w_i * (slope_i * bias_i + offset_i)``; a row's factors plus the bias add up
to its blended log-odds. The blend has a calibrator of its own on top (``none`` unless one
beats it beyond its interval, as for every family), so factors are log-odds, as for a single
family.

The weights are chosen on the calibration half of the validation snapshot by log loss, over a
grid of the simplex (step :data:`WEIGHT_STEP`, searched in a fixed order: deterministic) of
each family's out-of-fold Platt-scaled log-odds; a family whose weight is 0 is left out of the
shipped model, and when one family has all the weight it ships alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.linear_model import LogisticRegression

from propensity.models.calibration import Calibrator, choose_calibration, logistic, out_of_fold
from propensity.models.estimator import feature_matrix
from propensity.models.linear import AdditiveBooster, top_k_columns

WEIGHT_STEP = 0.05  # validation differences finer than this did not predict the test winner


@dataclass
class BlendPropensityModel:
    """Families with their affine maps and convex weights; the interface of the other families."""

    name: str
    feature_names: list[str]
    feature_labels: dict[str, str]
    categories: dict[str, list[str]]
    families: list[str]
    components: list  # fitted family models, each with its own feature_names
    weights: np.ndarray  # convex: >= 0, summing to 1
    slopes: np.ndarray  # per family: its Platt slope (1 when it keeps its own log-odds)
    offsets: np.ndarray  # per family: its Platt offset (0 when it keeps its own log-odds)
    calibrator: Calibrator
    metadata: dict = field(default_factory=dict)

    @property
    def booster(self) -> BlendBooster:
        """Booster-shaped access (``predict``, ``feature_importance``) for code written for trees."""
        return BlendBooster(self)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's columns, numeric as float64, categoricals with the training categories."""
        return feature_matrix(frame, self.feature_names, self.categories)

    def used_features(self) -> list[str]:
        """The features some family reads, in model order."""
        used = {name for component in self.components for name in component.used_features()}
        return [name for name in self.feature_names if name in used]

    def _columns(self, component) -> np.ndarray:
        """Where each of a family's features sits in the blend's feature order."""
        index = {name: i for i, name in enumerate(self.feature_names)}
        return np.array([index[name] for name in component.feature_names], dtype=np.int64)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Blended log-odds: ``sum_i w_i * (slope_i * raw_i + offset_i)``."""
        total = np.zeros(len(frame))
        for component, w, a, b in self._terms():
            total += w * (a * component.raw_score(frame) + b)
        return total

    def raw_score_from_parts(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """Blended log-odds from each family's raw log-odds (family -> array), already computed."""
        return sum(
            w * (a * np.asarray(raw[f], dtype=float) + b)
            for f, w, a, b in zip(self.families, self.weights, self.slopes, self.offsets, strict=True)
        )

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the outcome."""
        return self.calibrator.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Log-odds contributions (rows, features + 1), the last column the bias: each family's
        exact contributions scaled by ``w_i * slope_i``; each row adds up to :meth:`raw_score`."""
        out = np.zeros((len(frame), len(self.feature_names) + 1))
        for component, w, a, b in self._terms():
            part = component.contributions(frame)
            out[:, self._columns(component)] += w * a * part[:, :-1]
            out[:, -1] += w * (a * part[:, -1] + b)
        return out

    def top_contributions(self, matrix: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the ``k`` features of largest |contribution|, strongest first."""
        return top_k_columns(self.contributions(matrix)[:, :-1], k)

    def predict_and_explain(self, table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities and the ``k`` strongest contributions of an Arrow feature table;
        the probability is :meth:`predict_proba`'s to the bit (the contributions add up to its
        log-odds to rounding)."""
        frame = table.select(self.feature_names).to_pandas()
        probability = self.calibrator.transform(self.raw_score(frame))
        if k <= 0:
            return probability, np.zeros((len(frame), 0), np.int32), np.zeros((len(frame), 0))
        indices, impacts = top_k_columns(self.contributions(frame)[:, :-1], k)
        return probability, indices, impacts

    def _terms(self):
        return zip(self.components, self.weights, self.slopes, self.offsets, strict=True)

    def save(self, path: str | Path) -> Path:
        """Write the model without pickle (:func:`propensity.models.estimator.save_model`)."""
        from propensity.models.estimator import save_model

        return save_model(self, path)


class BlendBooster(AdditiveBooster):
    """The blend through the ``Booster`` interface (:class:`~propensity.models.linear.AdditiveBooster`)."""

    def feature_importance(self, importance_type: str = "gain") -> np.ndarray:
        """Each family's importance, each normalised to sum 1 and weighted by the family's weight."""
        out = np.zeros(len(self.model.feature_names))
        for component, w, *_ in self.model._terms():
            values = np.asarray(component.booster.feature_importance(importance_type), dtype=float)
            total = values.sum()
            if total > 0:
                out[self.model._columns(component)] += w * values / total
        return out


@dataclass(frozen=True)
class BlendChoice:
    """The weights validation chose, each family's map, and the blend's out-of-fold log loss."""

    weights: dict[str, float]
    maps: dict[str, tuple[float, float]]  # family -> (slope, offset)
    out_of_fold: np.ndarray  # blended probabilities of the calibration rows (out-of-fold maps)
    log_loss: float

    def single_family(self) -> str | None:
        """The family holding all the weight, if one does."""
        return next((f for f, w in self.weights.items() if w >= 1.0 - 1e-12), None)


def simplex_grid(families: int, step: float = WEIGHT_STEP) -> np.ndarray:
    """Every weight vector on the simplex with entries in multiples of ``step`` (fixed order)."""
    units = round(1 / step)
    rows = [c for c in product(range(units + 1), repeat=families - 1) if sum(c) <= units]
    return np.array([[*c, units - sum(c)] for c in rows], dtype=float) / units


def _row_log_loss(y: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Mean log loss of the probability ``logistic(logits)`` for each column of ``logits``."""
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, stable for large |z|.
    signed = np.where(y[:, None] == 1, -logits, logits)
    return np.logaddexp(0.0, signed).mean(axis=0)


def platt_map(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, offset) of Platt scaling: the logistic regression of the outcome on the raw score."""
    fitted = LogisticRegression(C=1e6).fit(np.asarray(raw, dtype=float).reshape(-1, 1), y)
    return float(fitted.coef_[0, 0]), float(fitted.intercept_[0])


def choose_weights(
    raw: dict[str, np.ndarray], platt: dict[str, bool], y: np.ndarray, seed: int
) -> BlendChoice:
    """Convex weights over ``raw`` (family -> raw log-odds of the calibration rows) by log loss of
    the blend of out-of-fold mapped log-odds; ``platt``: which families are Platt-scaled (the
    others keep their own log-odds). Ties go to the first grid point (the last family alone)."""
    y = np.asarray(y, dtype=int)
    families = list(raw)
    logits = []
    for family in families:
        if platt[family]:
            p = np.clip(out_of_fold("sigmoid", raw[family], y, seed), 1e-12, 1 - 1e-12)
            logits.append(np.log(p) - np.log1p(-p))
        else:
            logits.append(np.asarray(raw[family], dtype=float))
    stacked = np.column_stack(logits)
    grid = simplex_grid(len(families))
    losses = _row_log_loss(y, stacked @ grid.T)
    best = int(np.argmin(losses))
    weights = {f: float(w) for f, w in zip(families, grid[best], strict=True)}
    maps = {f: platt_map(raw[f], y) if platt[f] else (1.0, 0.0) for f in families}
    return BlendChoice(weights, maps, logistic(stacked @ grid[best]), float(losses[best]))


def build_blend(
    choice: BlendChoice, models: dict[str, object], name: str, feature_names: list[str], labels: dict
) -> BlendPropensityModel:
    """The shipped blend of ``choice``: families with weight 0 left out; calibrator ``none``."""
    kept = [f for f in models if choice.weights.get(f, 0.0) > 0.0]
    categories: dict[str, list[str]] = {}
    for family in kept:
        categories |= getattr(models[family], "categories", {}) or {}
    return BlendPropensityModel(
        name=name,
        feature_names=list(feature_names),
        feature_labels=dict(labels),
        categories=categories,
        families=kept,
        components=[models[f] for f in kept],
        weights=np.array([choice.weights[f] for f in kept]),
        slopes=np.array([choice.maps[f][0] for f in kept]),
        offsets=np.array([choice.maps[f][1] for f in kept]),
        calibrator=Calibrator("none"),
    )


@dataclass
class FittedBlend:
    """What :func:`fit_blend` found: the weights, the shipped model (None when one family holds
    all the weight: ``single`` names it), its parameters for the run and why."""

    choice: BlendChoice
    model: BlendPropensityModel | None
    single: str | None
    params: dict
    calibration_log_loss: dict[str, float]
    reason: str


def fit_blend(
    models: dict[str, object],
    raw: dict[str, np.ndarray],
    y: np.ndarray,
    calibration: str,
    seed: int,
    *,
    name: str,
    feature_names: list[str],
    labels: dict[str, str],
) -> FittedBlend:
    """Weights over the fitted ``models`` (family -> model, calibrated: a family whose calibrator is
    not ``none`` is Platt-scaled in the blend) from their ``raw`` log-odds on the calibration rows
    ``y``; then the blend's own calibrator chosen as every family's (``calibration``)."""
    platt = {f: m.calibrator.method != "none" for f, m in models.items()}
    choice = choose_weights(raw, platt, y, seed)
    shown = ", ".join(f"{f} {w:.2f}" for f, w in choice.weights.items())
    single = choice.single_family()
    if single is not None:
        return FittedBlend(choice, None, single, {}, {}, f"{single} alone")
    model = build_blend(choice, models, name, feature_names, labels)
    blended = model.raw_score_from_parts(raw)
    calibrated = choose_calibration(calibration, blended, y, seed)
    model.calibrator = Calibrator(calibrated.method).fit(blended, y)
    model.metadata["calibration"] = calibrated.record()
    model.metadata["blend"] = {
        "weights": choice.weights,
        "maps": {f: list(m) for f, m in choice.maps.items()},
    }
    params = {
        **{f"weight_{f}": w for f, w in choice.weights.items()},
        **{f"platt_{f}": str(platt[f]) for f in choice.weights},
        "calibration": calibrated.method,
    }
    reason = f"blend of {shown} by validation log_loss {choice.log_loss:.4f}"
    return FittedBlend(choice, model, None, params, calibrated.log_loss, reason)
