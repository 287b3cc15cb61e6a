"""LightGBM hyperparameters searched on time-ordered validation rows (Optuna, seeded TPE).

Every trial trains on the training snapshots and stops early on the validation rows (a later
snapshot); the trial's score is the selection metric there. The first trial is always the
defaults, so the search can only find something better on validation. The data are binned
once and shared by every trial. Same data and seed, same trials, same model, unless the time
cap cuts the search short (recorded as ``timed_out``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import optuna
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from propensity.core.config import TrainingConfig

HIGHER_IS_BETTER = {"auc": True, "average_precision": True, "log_loss": False, "brier": False}


def score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    """``metric`` (auc, average_precision, log_loss, brier) of probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=float), 1e-9, 1 - 1e-9)
    if metric == "auc":
        return float(roc_auc_score(y, p))
    if metric == "average_precision":
        return float(average_precision_score(y, p))
    if metric == "brier":
        return float(brier_score_loss(y, p))
    return float(log_loss(y, p, labels=[0, 1]))


def better(metric: str, a: float, b: float) -> bool:
    """True when ``a`` is strictly better than ``b`` by ``metric``."""
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def search_space(trial: optuna.Trial, fixed: dict) -> dict:
    """A trial's parameters; keys the config sets in ``training.lightgbm`` are not searched.

    Depth stays at most 6 (explanation cost grows with depth squared); leaves and leaf sizes
    reach down to small, heavily regularised trees, which small, noisy data sets need.
    """
    space = {
        "learning_rate": lambda: trial.suggest_float("learning_rate", 0.02, 0.15, log=True),
        "num_leaves": lambda: trial.suggest_int("num_leaves", 4, 48, log=True),
        "max_depth": lambda: trial.suggest_int("max_depth", 2, 6),
        "min_child_samples": lambda: trial.suggest_int("min_child_samples", 20, 1000, log=True),
        "feature_fraction": lambda: trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": lambda: trial.suggest_float("bagging_fraction", 0.6, 1.0),
        "lambda_l2": lambda: trial.suggest_float("lambda_l2", 0.01, 50.0, log=True),
    }
    return {key: suggest() for key, suggest in space.items() if key not in fixed}


@dataclass
class TuningResult:
    """The best trial's booster and parameters, and every trial's validation score."""

    params: dict
    booster_text: str
    best_iteration: int
    validation_score: float
    trials: list[dict] = field(default_factory=list)
    timed_out: bool = False
    seconds: float = 0.0


def search_lightgbm(
    train_set: lgb.Dataset,
    valid_set: lgb.Dataset,
    valid_matrix,
    y_valid: np.ndarray,
    base_params: dict,
    training: TrainingConfig,
) -> TuningResult:
    """Search LightGBM parameters around ``base_params`` (the defaults plus the config's
    overrides) by ``training.selection_metric`` on the validation rows (``valid_set`` for
    early stopping, ``valid_matrix`` / ``y_valid`` to score); returns the best trial."""
    metric = training.selection_metric
    tuning = training.tuning
    rounds = min(int(base_params.get("num_boost_round", tuning.max_boost_rounds)), tuning.max_boost_rounds)
    fixed = {k: v for k, v in base_params.items() if k != "num_boost_round"}
    best: dict = {}
    trials: list[dict] = []
    start = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        began = time.perf_counter()
        params = {**fixed, **search_space(trial, training.lightgbm)}
        booster = _fit_trial(params, rounds, train_set, valid_set, training.early_stopping_rounds)
        value = score(metric, y_valid, booster.predict(valid_matrix, num_iteration=booster.best_iteration))
        seconds = round(time.perf_counter() - began, 2)
        trials.append(
            {
                "trial": trial.number,
                metric: value,
                "best_iteration": booster.best_iteration,
                "seconds": seconds,
            }
            # The monotone vector is the same in every trial and as long as the feature list.
            | {k: v for k, v in params.items() if k != "monotone_constraints"}
        )
        if not best or better(metric, value, best["value"]):
            best.update(
                value=value,
                params={**params, "num_boost_round": rounds},
                booster_text=booster.model_to_string(num_iteration=booster.best_iteration),
                best_iteration=int(booster.best_iteration),
            )
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=training.seed, n_startup_trials=min(5, tuning.trials)),
    )
    # The defaults first: tuning never does worse than them on validation.
    study.enqueue_trial({k: fixed[k] for k in search_space_keys(training.lightgbm) if k in fixed})
    study.optimize(objective, n_trials=tuning.trials, timeout=tuning.timeout_seconds)
    return TuningResult(
        params=best["params"],
        booster_text=best["booster_text"],
        best_iteration=best["best_iteration"],
        validation_score=best["value"],
        trials=trials,
        timed_out=len(trials) < tuning.trials,
        seconds=time.perf_counter() - start,
    )


def _fit_trial(
    params: dict, rounds: int, train_set: lgb.Dataset, valid_set: lgb.Dataset, early_stopping_rounds: int
) -> lgb.Booster:
    """One trial's booster, stopped early on the validation rows."""
    return lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )


def search_space_keys(fixed: dict) -> list[str]:
    """The parameter names the search varies (those the config does not fix)."""
    return [
        k
        for k in (
            "learning_rate",
            "num_leaves",
            "max_depth",
            "min_child_samples",
            "feature_fraction",
            "bagging_fraction",
            "lambda_l2",
        )
        if k not in fixed
    ]
