"""Training: candidate models, selection on validation, calibration.

Candidates fit on the training part of the out-of-time, profile-disjoint split
(:mod:`propensity.models.split`). The first validation half stops LightGBM early, scores the
hyperparameter search and picks the logistic regression's strength; the second half, which
no candidate has seen, compares the candidates and fits the calibrator (or keeps the model's
own probabilities: see :mod:`propensity.models.calibration`).

LightGBM is held monotone in the features the registry gives a direction
(``training.monotone_constraints``).

The test snapshot plays no part in any choice: it only reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from propensity.core.config import OutcomeConfig, TrainingConfig
from propensity.core.sampling import row_weights
from propensity.models.baselines import RFM_FEATURES
from propensity.models.bgnbd_model import BgNbdPropensityModel, bgnbd_candidate
from propensity.models.blend import BlendPropensityModel, fit_blend
from propensity.models.calibration import Calibrator, choose_calibration
from propensity.models.estimator import PropensityModel
from propensity.models.linear import LinearPropensityModel, LogScaledDesign, fit_linear
from propensity.models.split import Split
from propensity.models.tuning import HIGHER_IS_BETTER, score, search_lightgbm

SELECTION_METRICS = ("auc", "average_precision", "log_loss", "brier")

# max_depth 6: explanation cost grows with depth squared; on the benchmark data deeper trees
# gained no AUC. Small trees with at least 100 rows a leaf: rare outcomes give few positives,
# and on the demo data this took conversion from 0.951 to 0.964 of the oracle AUC against
# 31 leaves / 50 a leaf. No is_unbalance / scale_pos_weight: they distort probabilities.
DEFAULT_LIGHTGBM = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 6,
    "min_child_samples": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_boost_round": 2000,
}
CATEGORICAL_FEATURES = ("loyalty_tier",)
# "intermediate": tighter trees than "basic" (which constrains every split to the midpoint of
# its parent and costs accuracy), at a fraction of "advanced"'s training time.
MONOTONE_METHOD = "intermediate"


def monotone_vector(feature_names: list[str], directions: dict[str, int] | None) -> list[int]:
    """LightGBM's ``monotone_constraints``: one direction per column of the model matrix, in
    the model's feature order; categoricals and features without a declared direction get 0."""
    directions = directions or {}
    return [0 if name in CATEGORICAL_FEATURES else int(directions.get(name, 0)) for name in feature_names]


# Below this many cells (rows x features) one thread: LightGBM's threads synchronise after every
# histogram, which costs more than it saves on small data. Above it two: with OpenMP's idle
# threads sleeping instead of spinning (models/__init__.py) a second thread costs no extra CPU
# on a busy machine (100 rounds on 109k x 245 at load average 15: 4.8 CPU-s on 2 threads,
# 4.7 on 1; spinning, 33.6) and lets the histograms use both cores of an idle one. The count
# follows the data, never the load: LightGBM's model depends on it (deterministic per count).
ONE_THREAD_CELLS = 20_000_000


def lightgbm_params(training: TrainingConfig, cells: int = 0, monotone: list[int] | None = None) -> dict:
    """Defaults, overridden by the config; binary objective and determinism always on.

    ``cells``: rows x features of the training matrix, which sets the default thread count.
    ``monotone``: :func:`monotone_vector`, applied when ``training.monotone_constraints`` is on
    and some feature has a direction.
    """
    params = {**DEFAULT_LIGHTGBM, **training.lightgbm}
    if training.monotone_constraints and monotone and any(monotone):
        params.setdefault("monotone_constraints", list(monotone))
        params.setdefault("monotone_constraints_method", MONOTONE_METHOD)
    params.update(
        {
            "objective": "binary",
            "seed": training.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": params.get("num_threads", 1 if cells < ONE_THREAD_CELLS else 2),
            "verbosity": -1,
        }
    )
    return params


Model = PropensityModel | LinearPropensityModel | BgNbdPropensityModel | BlendPropensityModel


@dataclass
class Candidate:
    """One fitted candidate: its model (calibrated), how it was fitted, how it validated."""

    family: str  # lightgbm | logistic | bgnbd | blend
    model: Model
    params: dict
    validation: dict[str, float]  # metrics of out-of-fold calibrated probabilities
    calibration_log_loss: dict[str, float]  # per calibration method tried
    seconds: float
    details: dict = field(default_factory=dict)  # trials (lightgbm), strengths (logistic)


@dataclass
class Trained:
    """The chosen candidate, all candidates, and why the chosen one won."""

    chosen: Candidate
    candidates: list[Candidate]
    reason: str

    @property
    def model(self) -> Model:
        """The registered model."""
        return self.chosen.model


def _categories(parts: Split, feature_names: list[str]) -> dict[str, list[str]]:
    """Text columns (the loyalty tier, categorical traits) -> their training categories."""
    text = [
        c for c in feature_names if c in CATEGORICAL_FEATURES or pd.api.types.is_string_dtype(parts.train[c])
    ]
    return {c: sorted(parts.train[c].dropna().astype(str).unique().tolist()) for c in text}


def _lightgbm(
    parts: Split,
    names: list[str],
    labels: dict[str, str],
    training: TrainingConfig,
    name: str,
    monotone: dict[str, int] | None = None,
) -> tuple[PropensityModel, dict, dict]:
    """The best LightGBM of the search (uncalibrated), its parameters and the trials."""
    draft = PropensityModel(
        name=name,
        feature_names=names,
        feature_labels=labels,
        categories=_categories(parts, names),
        booster_text="",
        calibrator=Calibrator("sigmoid"),
    )
    # Binned once for every trial; leaf-size limits vary by trial, so no pre-filtering.
    train_set = lgb.Dataset(
        draft.matrix(parts.train),
        label=parts.train["label"].to_numpy(),
        weight=row_weights(parts.train),  # sampled training: 1 / each row's sampling rate
        params={"feature_pre_filter": False, "verbosity": -1},
        free_raw_data=False,
    )
    valid_matrix = draft.matrix(parts.early_stopping)
    valid_set = lgb.Dataset(
        valid_matrix,
        label=parts.early_stopping["label"].to_numpy(),
        reference=train_set,
        params={"feature_pre_filter": False, "verbosity": -1},
    )
    cells = len(parts.train) * len(names)
    result = search_lightgbm(
        train_set,
        valid_set,
        valid_matrix,
        parts.early_stopping["label"].to_numpy(),
        lightgbm_params(training, cells, monotone_vector(names, monotone)),
        training,
    )
    draft.booster_text = result.booster_text
    # The vector is as long as the feature list: recorded as counts (a run parameter is short).
    params = {k: v for k, v in result.params.items() if k != "monotone_constraints"}
    vector = result.params.get("monotone_constraints") or []
    params |= {
        "monotone_increasing": sum(1 for d in vector if d > 0),
        "monotone_decreasing": sum(1 for d in vector if d < 0),
        "best_iteration": result.best_iteration,
    }
    details = {
        "trials": result.trials,
        "timed_out": result.timed_out,
        "search_seconds": result.seconds,
        "trial_rows": result.trial_rows,
    }
    details["lightgbm_params"] = result.params  # in full, for the refit
    return draft, params, details


def _logistic(
    parts: Split,
    names: list[str],
    labels: dict[str, str],
    training: TrainingConfig,
    name: str,
    monotone: dict[str, int] | None = None,  # unused: a linear model's signs are its own
) -> tuple[LinearPropensityModel, dict, dict]:
    """The logistic regression on log RFM (the model's recency, frequency and monetary features,
    all of them when it has none) of the best strength (uncalibrated), its parameters and the
    validation log loss of every strength."""
    # Log RFM, not every feature: the baseline it stands for, steadier on few positives, and a
    # blend with it still reads only the features the trees split on besides these few.
    names = [n for n in names if n in RFM_FEATURES] or names
    labels = {n: labels.get(n, n) for n in names}
    categories = _categories(parts, names)
    shell = LinearPropensityModel(
        name=name,
        feature_names=names,
        feature_labels=labels,
        categories=categories,
        design=None,  # type: ignore[arg-type]  # set below, from the training matrix
        coef=np.zeros(0),
        intercept=0.0,
        calibrator=Calibrator("sigmoid"),
    )
    train_matrix = shell.matrix(parts.train)
    shell.design = LogScaledDesign.fit(train_matrix, categories)
    fitted = fit_linear(
        train_matrix,
        parts.train["label"].to_numpy(),
        shell.matrix(parts.early_stopping),
        parts.early_stopping["label"].to_numpy(),
        shell,
        training.seed,
        row_weights(parts.train),
    )
    params = {"C": fitted.C, "penalty": "l2", "design_columns": len(fitted.model.coef)}
    return fitted.model, params, {"validation_log_loss_by_C": fitted.validation_log_loss}


FITTERS = {"lightgbm": _lightgbm, "logistic": _logistic}


def fit_candidates(
    parts: Split,
    feature_names: list[str],
    feature_labels: dict[str, str],
    training: TrainingConfig,
    name: str,
    monotone: dict[str, int] | None = None,
    outcome: OutcomeConfig | None = None,
) -> Trained:
    """Fit every configured candidate and calibrate each on the calibration half of the validation
    snapshot with the method validation chose (BG/NBD: always Platt). With ``training.blend`` and
    two or more families the shipped model is their convex blend (:mod:`propensity.models.blend`,
    weights by validation log loss; a single family when it has all the weight); otherwise the
    candidate with the best ``training.selection_metric`` there (out-of-fold calibrated).

    ``monotone``: feature name -> direction (``FeatureSet.monotone``) for LightGBM; ``outcome``:
    whether BG/NBD applies. Calibration choices go to each model's ``metadata["calibration"]``."""
    y = parts.calibration["label"].to_numpy()
    candidates, skipped, raw = [], [], {}
    for family in training.candidates:
        start = time.perf_counter()
        if family == "bgnbd":
            fitted = bgnbd_candidate(parts.train, feature_names, feature_labels, name, outcome, training.seed)
            if isinstance(fitted, str):
                skipped.append(f"bgnbd not fitted: {fitted}")
                continue
            model, params, details = fitted
        else:
            model, params, details = FITTERS[family](
                parts, feature_names, feature_labels, training, name, monotone
            )
        raw[family] = model.raw_score(parts.calibration)
        method = "sigmoid" if family == "bgnbd" else training.calibration
        choice = choose_calibration(method, raw[family], y, training.seed)
        model.calibrator = Calibrator(choice.method).fit(raw[family], y)
        model.metadata["calibration"] = choice.record()
        validation = {m: score(m, y, choice.out_of_fold[choice.method]) for m in SELECTION_METRICS}
        params = {**params, "calibration": choice.method}
        candidates.append(
            Candidate(
                family, model, params, validation, choice.log_loss, time.perf_counter() - start, details
            )
        )
    if training.blend and len(candidates) > 1:
        trained = _blend(
            candidates, raw, parts, training, name=name, feature_names=feature_names, labels=feature_labels
        )
    else:
        trained = _best(candidates, training.selection_metric, parts)
    if skipped:
        trained.reason += "; " + "; ".join(skipped)
    return trained


def _best(candidates: list[Candidate], metric: str, parts: Split) -> Trained:
    """The candidate with the best validation ``metric``."""
    ranked = sorted(
        candidates, key=lambda c: -c.validation[metric] if HIGHER_IS_BETTER[metric] else c.validation[metric]
    )
    chosen = ranked[0]
    others = ", ".join(f"{c.family} {c.validation[metric]:.4f}" for c in ranked[1:])
    reason = (
        f"{chosen.family}: best validation {metric} {chosen.validation[metric]:.4f}"
        + (f" (vs {others})" if others else "")
        + f" on the calibration half of the {_as_of(parts.calibration)} snapshot"
    )
    return Trained(chosen, candidates, reason)


def _blend(
    candidates: list[Candidate], raw: dict[str, np.ndarray], parts: Split, training: TrainingConfig, **model
) -> Trained:
    """The convex blend of the candidates by validation log loss (a family alone at weight 1);
    ``model``: the blend's name, feature_names and feature_labels."""
    start = time.perf_counter()
    y = parts.calibration["label"].to_numpy()
    fitted = fit_blend(
        {c.family: c.model for c in candidates}, raw, y, training.calibration, training.seed, **model
    )
    losses = ", ".join(f"{c.family} {c.validation['log_loss']:.4f}" for c in candidates)
    where = f"on the calibration half of the {_as_of(parts.calibration)} snapshot"
    if fitted.single is not None:
        chosen = next(c for c in candidates if c.family == fitted.single)
        return Trained(
            chosen,
            candidates,
            f"{fitted.single}: all the blend weight by validation log_loss ({losses}) {where}",
        )
    validation = {m: score(m, y, fitted.choice.out_of_fold) for m in SELECTION_METRICS}
    blend = Candidate(
        "blend",
        fitted.model,
        fitted.params,
        validation,
        fitted.calibration_log_loss,
        time.perf_counter() - start,
        {},
    )
    return Trained(blend, [*candidates, blend], f"{fitted.reason} (vs {losses}) {where}")


def _as_of(frame: pd.DataFrame) -> str:
    return str(pd.Timestamp(frame["as_of"].max()).date())
