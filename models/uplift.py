"""Uplift models: how much a contact changes each profile's chance of the outcome.

Two meta-learners on LightGBM (after Künzel et al. 2019, as causalml's ``BaseTClassifier`` and
``BaseXClassifier`` build them), fitted on rows whose arm is known (``treated`` 1 or 0):

- **T-learner**: one outcome model per arm, ``mu1`` on the treated and ``mu0`` on the control
  rows; uplift = ``mu1(x) - mu0(x)``.
- **X-learner**: the same two outcome models impute each training row's effect (treated:
  ``y - mu0(x)``, control: ``mu1(x) - y``); one regression per arm learns the imputed effects
  (``tau1``, ``tau0``); uplift = ``g * tau0(x) + (1 - g) * tau1(x)`` with ``g`` the treated share
  of the training rows (a randomised campaign's propensity, the same for everyone).

The learner with the best Qini coefficient on the validation rows is kept. The outcome models
keep LightGBM's own probabilities (no calibrator), so the factors add up exactly:

- T-learner factors are **log-odds**: each feature's TreeSHAP contribution to ``mu1`` less its
  contribution to ``mu0``; they sum (with the bias) to ``logit(mu1) - logit(mu0)``.
- X-learner factors are **probability** (uplift) units: ``g`` times the feature's contribution to
  ``tau0`` plus ``1 - g`` times its contribution to ``tau1``; they sum (with the bias) to the uplift.

Both are computed in one TreeSHAP pass over the two models' trees, the second's leaves negated
(or each scaled by its weight): SHAP values are linear in the trees. The same pass predicts
(each booster's trees add to their own raw score, so no booster is predicted again): the
T-learner's two outcome models give ``mu1`` and ``mu0`` bit for bit as LightGBM's ``predict``
would, the X-learner's treated model rides along unexplained for ``mu1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.config import TrainingConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.models.calibration import Calibrator, logistic
from propensity.models.estimator import (
    PropensityModel,
    arrow_lightgbm_array,
    feature_matrix,
    lightgbm_array,
    save_model,
)
from propensity.models.train import CATEGORICAL_FEATURES, lightgbm_params
from propensity.models.uplift_metrics import qini_coefficient

if TYPE_CHECKING:
    from propensity.models.treeshap import TreeShapExplainer

FACTOR_SPACE = {"t": "log_odds", "x": "probability"}


def _weighted_trees(booster: lgb.Booster, weight: float) -> list[dict]:
    """The booster's trees (those ``predict`` uses) with every leaf value times ``weight``."""

    def scale(node: dict) -> None:
        if "leaf_value" in node:
            node["leaf_value"] = float(node["leaf_value"]) * weight
        for child in ("left_child", "right_child"):
            if child in node:
                scale(node[child])

    trees = copy.deepcopy(booster.dump_model()["tree_info"])
    for tree in trees:
        scale(tree["tree_structure"])
    return trees


@dataclass
class UpliftModel:
    """A fitted meta-learner: outcome models per arm (and the X-learner's effect models), with the
    feature contract of a :class:`PropensityModel`; stored with skops like one."""

    name: str
    learner: str  # t | x
    feature_names: list[str]
    feature_labels: dict[str, str]
    categories: dict[str, list[str]]
    treated: PropensityModel  # mu1: the outcome if contacted
    control: PropensityModel  # mu0: the outcome if not
    effects: list[PropensityModel] = field(default_factory=list)  # X-learner: [tau1, tau0]
    treated_share: float = 0.5  # g of the X-learner's combination
    metadata: dict = field(default_factory=dict)
    _explainer: TreeShapExplainer | None = field(default=None, repr=False, compare=False)

    predicts_uplift = True  # the scorer adds the `uplift` column

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_explainer"] = None  # rebuilt from the boosters on first use
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_explainer", None)
        self.__dict__.update(state)

    def _weighted(self) -> list[tuple[PropensityModel, float]]:
        """The models whose weighted sum is the uplift's raw score (log-odds for T, uplift for X)."""
        if self.learner == "t":
            return [(self.treated, 1.0), (self.control, -1.0)]
        tau1, tau0 = self.effects
        return [(tau1, 1.0 - self.treated_share), (tau0, self.treated_share)]

    def _ensemble(self) -> list[tuple[PropensityModel, float, int, bool]]:
        """(model, leaf weight, raw-score part, explained) of the explainer's trees, in order.
        T: part 0 the treated model (its raw score is logit mu1), part 1 the control model negated
        (minus logit mu0). X: part 0 the weighted effect models (the uplift), part 1 the treated
        model, predicted for mu1 but not explained."""
        if self.learner == "t":
            return [(self.treated, 1.0, 0, True), (self.control, -1.0, 1, True)]
        return [(model, w, 0, True) for model, w in self._weighted()] + [(self.treated, 1.0, 1, False)]

    @property
    def explainer(self) -> TreeShapExplainer:
        """Exact TreeSHAP over the weighted union of the models' trees (and the raw scores scoring
        needs, see :meth:`_ensemble`), built on first use."""
        if self._explainer is None:
            from propensity.models.treeshap import TreeShapExplainer

            dump = self.treated.booster.dump_model()
            trees, parts, explained = [], [], []
            for model, w, part, explain in self._ensemble():
                weighted = _weighted_trees(model.booster, w)
                trees += weighted
                parts += [part] * len(weighted)
                explained += [explain] * len(weighted)
            self._explainer = TreeShapExplainer.from_dump({**dump, "tree_info": trees}, parts, explained)
        return self._explainer

    def used_features(self) -> list[str]:
        """The features some tree of some part splits on, in model order."""
        used = {f for model in (self.treated, self.control, *self.effects) for f in model.used_features()}
        return [f for f in self.feature_names if f in used]

    def rows(self, table: pa.Table) -> np.ndarray:
        """The float64 rows every part predicts on (they share the categories)."""
        return arrow_lightgbm_array(table, self.feature_names, self.treated._categorical_lists())

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's columns, as :meth:`PropensityModel.matrix`."""
        return feature_matrix(frame, self.feature_names, self.categories)

    def frame_rows(self, frame: pd.DataFrame) -> np.ndarray:
        """The float64 rows of a pandas feature table (as ``PropensityModel.lightgbm_array``)."""
        return lightgbm_array(self.matrix(frame), self.treated.booster.pandas_categorical)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """The outcome's probability if contacted, for a pandas feature table (the pyfunc's path)."""
        return self._predict_rows(self.frame_rows(frame))[0]

    def predict_uplift(self, frame: pd.DataFrame) -> np.ndarray:
        """The uplift, for a pandas feature table."""
        return self._predict_rows(self.frame_rows(frame))[1]

    def save(self, path: str | Path) -> Path:
        """Write the model to one file without pickle (skops, as a PropensityModel)."""
        return save_model(self, path)

    def predict(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(probability of the outcome if contacted, uplift) per row of an Arrow feature table."""
        return self._predict_rows(self.rows(table))

    def arm_blind_probability(self, table: pa.Table) -> np.ndarray:
        """What a propensity model fitted on these rows, arm ignored, estimates: the treated
        share's mix of the outcome probability with and without contact (the ranking uplift
        targeting is compared against)."""
        rows = self.rows(table)
        treated = logistic(self.treated.booster.predict(rows, raw_score=True))
        control = logistic(self.control.booster.predict(rows, raw_score=True))
        return self.treated_share * treated + (1 - self.treated_share) * control

    def _predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        treated = logistic(self.treated.booster.predict(rows, raw_score=True))
        if self.learner == "t":
            return treated, treated - logistic(self.control.booster.predict(rows, raw_score=True))
        return treated, sum(w * model.booster.predict(rows, raw_score=True) for model, w in self._weighted())

    def predict_and_explain(
        self, table: pa.Table, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(probability if contacted, uplift, factor indices (n, k), impacts (n, k)): the ``k``
        strongest contributions to the uplift's raw score (see the module docstring)."""
        rows = self.rows(table)
        if k <= 0:
            empty = np.zeros((len(rows), 0))
            return *self._predict_rows(rows), empty.astype(np.int32), empty
        # One pass predicts and explains: the parts' raw scores (see _ensemble), no booster.predict.
        raw, indices, impacts = self.explainer.part_scores_and_top_k(rows, k)
        if self.learner == "t":  # raw[1] is minus the control model's raw score, bit for bit
            treated = logistic(raw[0])
            return treated, treated - logistic(-raw[1]), indices, impacts
        return logistic(raw[1]), raw[0], indices, impacts

    def contributions(self, table: pa.Table) -> np.ndarray:
        """Every feature's contribution to the uplift's raw score (n, features + 1; last: bias)."""
        return self.explainer.contributions(self.rows(table))


# -- fitting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmRows:
    """Training and validation rows with their arm (``treated``) and outcome (``label``)."""

    train: pd.DataFrame
    valid: pd.DataFrame


def _booster(
    X: pd.DataFrame, y: np.ndarray, Xv: pd.DataFrame, yv: np.ndarray, params: dict, stop: int
) -> lgb.Booster:
    """A LightGBM of ``params`` stopped early on the validation rows."""
    rounds = int(params.pop("num_boost_round", 1000))
    train = lgb.Dataset(X, label=y, params={"verbosity": -1}, free_raw_data=False)
    valid = lgb.Dataset(Xv, label=yv, reference=train)
    return lgb.train(
        params,
        train,
        num_boost_round=rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(stop, verbose=False)],
    )


def _part(shell: PropensityModel, booster: lgb.Booster, role: str) -> PropensityModel:
    """One fitted part of an uplift model, with the shared feature contract."""
    return PropensityModel(
        name=f"{shell.name}:{role}",
        feature_names=shell.feature_names,
        feature_labels=shell.feature_labels,
        categories=shell.categories,
        booster_text=booster.model_to_string(num_iteration=booster.best_iteration or None),
        calibrator=Calibrator("none"),
        metadata={"role": role, "best_iteration": int(booster.best_iteration)},
    )


def _check_arms(rows: ArmRows, treatment: TreatmentConfig) -> None:
    for part, frame in (("training", rows.train), ("validation", rows.valid)):
        treated = int(frame["treated"].sum())
        control = len(frame) - treated
        need = treatment.min_treated if part == "training" else 10
        if min(treated, control) < need:
            raise UserError(
                f"uplift model: {treated} treated and {control} control rows in the {part} snapshots "
                f"(need {need} of each); widen treatment.window_days or use more data"
            )


def fit_uplift(
    rows: ArmRows,
    feature_names: list[str],
    feature_labels: dict[str, str],
    training: TrainingConfig,
    treatment: TreatmentConfig,
    name: str,
) -> tuple[UpliftModel, dict[str, float]]:
    """Fit each configured learner and keep the one with the best validation Qini; returns the
    model and every learner's validation Qini. The learners share the outcome models."""
    _check_arms(rows, treatment)
    categories = {
        c: sorted(rows.train[c].dropna().astype(str).unique().tolist())
        for c in CATEGORICAL_FEATURES
        if c in feature_names
    }
    shell = PropensityModel(name, feature_names, feature_labels, categories, "", Calibrator("none"))
    X, Xv = shell.matrix(rows.train), shell.matrix(rows.valid)
    t, tv = rows.train["treated"].to_numpy(bool), rows.valid["treated"].to_numpy(bool)
    y, yv = rows.train["label"].to_numpy(float), rows.valid["label"].to_numpy(float)
    params = lightgbm_params(training, X.size)
    stop = training.early_stopping_rounds
    parts = {
        arm: _part(shell, _booster(X[mask], y[mask], Xv[vmask], yv[vmask], dict(params), stop), arm)
        for arm, mask, vmask in (("treated", t, tv), ("control", ~t, ~tv))
    }
    share = float(t.mean())
    models: dict[str, UpliftModel] = {}
    for learner in treatment.learners:
        effects = (
            _effect_models(shell, parts, X, Xv, (t, tv), (y, yv), params, stop) if learner == "x" else []
        )
        models[learner] = UpliftModel(
            name,
            learner,
            feature_names,
            feature_labels,
            categories,
            parts["treated"],
            parts["control"],
            effects,
            share,
        )
    valid_table = pa.Table.from_pandas(rows.valid[feature_names], preserve_index=False)
    qini = {learner: qini_coefficient(yv, tv, m.predict(valid_table)[1]) for learner, m in models.items()}
    chosen = max(treatment.learners, key=lambda learner: qini[learner])  # ties: the first listed
    model = models[chosen]
    # The score (0-100) places the probability if contacted among the validation rows' (the
    # training job replaces it with the test snapshot's, as for a propensity model).
    reference = np.quantile(model.predict(valid_table)[0], np.linspace(0, 1, 1001))
    model.metadata |= {
        "reference_probabilities": reference.tolist(),
        "learner": chosen,
        "validation_qini": qini,
        "treated_share": share,
        "factor_space": FACTOR_SPACE[chosen],
    }
    return model, qini


def _effect_models(
    shell: PropensityModel,
    parts: dict[str, PropensityModel],
    X: pd.DataFrame,
    Xv: pd.DataFrame,
    arms: tuple[np.ndarray, np.ndarray],
    outcomes: tuple[np.ndarray, np.ndarray],
    params: dict,
    stop: int,
) -> list[PropensityModel]:
    """The X-learner's second stage: [tau1, tau0], regressions of the imputed effects, each
    stopped early on the validation rows' imputed effects."""
    # Effects have no declared direction: no monotone constraints here.
    regression = {k: v for k, v in params.items() if not k.startswith("monotone")} | {
        "objective": "regression"
    }

    def imputed(matrix: pd.DataFrame, treated: np.ndarray, y: np.ndarray) -> np.ndarray:
        mu1 = logistic(parts["treated"].booster.predict(matrix, raw_score=True))
        mu0 = logistic(parts["control"].booster.predict(matrix, raw_score=True))
        return np.where(treated, y - mu0, mu1 - y)

    d, dv = imputed(X, arms[0], outcomes[0]), imputed(Xv, arms[1], outcomes[1])
    out = []
    for role, want in (("effect_treated", True), ("effect_control", False)):
        mask, vmask = arms[0] == want, arms[1] == want
        booster = _booster(X[mask], d[mask], Xv[vmask], dv[vmask], dict(regression), stop)
        out.append(_part(shell, booster, role))
    return out
