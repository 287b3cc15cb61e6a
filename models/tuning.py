"""LightGBM hyperparameters searched on time-ordered validation rows (Optuna, seeded TPE).

Every trial trains on the training snapshots and stops early on the validation rows (a later
snapshot); the trial's score is the selection metric there. The first trial is always the
defaults, so the search can only find something better on validation. The data are binned
once and shared by every trial. On many training rows (``tuning.trial_rows``) the trials fit a
seeded sample of them (every positive, negatives reweighted; same bins) and the chosen
parameters are fitted once more on every row. Same data and seed, same trials, same model,
unless the time cap cuts the search short (recorded as ``timed_out``).
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
    """The chosen parameters' booster (fitted on every training row), and every trial's
    validation score."""

    params: dict
    booster_text: str
    best_iteration: int
    validation_score: float
    trials: list[dict] = field(default_factory=list)
    timed_out: bool = False
    seconds: float = 0.0
    trial_rows: int = 0  # the rows each trial fitted: all of them, or the sample of trial_subset


@dataclass
class _Fit:
    """One early-stopped fit: its parameters, booster and validation score."""

    params: dict
    booster: lgb.Booster
    value: float


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
    early stopping, ``valid_matrix`` / ``y_valid`` to score); returns the best trial.

    Beyond ``training.tuning.trial_rows`` training rows the trials fit :func:`trial_subset`
    and the chosen parameters are then fitted once more, on every row (same early stopping)."""
    tuning = training.tuning
    rounds = min(int(base_params.get("num_boost_round", tuning.max_boost_rounds)), tuning.max_boost_rounds)
    fixed = {k: v for k, v in base_params.items() if k != "num_boost_round"}
    start = time.perf_counter()
    trial_set = trial_subset(train_set, tuning.trial_rows, training.seed)

    def fit(params: dict, data: lgb.Dataset) -> _Fit:
        booster = _fit_trial(params, rounds, data, valid_set, training.early_stopping_rounds)
        predicted = booster.predict(valid_matrix, num_iteration=booster.best_iteration)
        return _Fit(params, booster, score(training.selection_metric, y_valid, predicted))

    best, trials = _run_study(lambda params: fit(params, trial_set), fixed, training)
    if trial_set is not train_set:  # the chosen parameters on every training row
        best = fit(best.params, train_set)
    return TuningResult(
        params={**best.params, "num_boost_round": rounds},
        booster_text=best.booster.model_to_string(num_iteration=best.booster.best_iteration),
        best_iteration=int(best.booster.best_iteration),
        validation_score=best.value,
        trials=trials,
        timed_out=len(trials) < tuning.trials,
        seconds=time.perf_counter() - start,
        trial_rows=trial_set.num_data(),
    )


def _run_study(fit, fixed: dict, training: TrainingConfig) -> tuple[_Fit, list[dict]]:
    """The seeded TPE study over :func:`search_space`, the defaults first; ``fit``: trial
    parameters -> :class:`_Fit`. Returns the best fit and every trial's record."""
    metric, tuning = training.selection_metric, training.tuning
    found: list[_Fit] = []
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        began = time.perf_counter()
        done = fit({**fixed, **search_space(trial, training.lightgbm)})
        trials.append(
            {
                "trial": trial.number,
                metric: done.value,
                "best_iteration": done.booster.best_iteration,
                "seconds": round(time.perf_counter() - began, 2),
            }
            # The monotone vector is the same in every trial and as long as the feature list.
            | {k: v for k, v in done.params.items() if k != "monotone_constraints"}
        )
        if not found or better(metric, done.value, found[0].value):
            found[:] = [done]
        return done.value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=training.seed, n_startup_trials=min(5, tuning.trials)),
    )
    # The defaults first: tuning never does worse than them on validation.
    study.enqueue_trial({k: fixed[k] for k in search_space_keys(training.lightgbm) if k in fixed})
    study.optimize(objective, n_trials=tuning.trials, timeout=tuning.timeout_seconds)
    return found[0], trials


# The trials' sample keeps at least this share of the negatives, however many the positives.
MIN_TRIAL_RATE = 0.1


def trial_subset(train_set: lgb.Dataset, rows: int | None, seed: int) -> lgb.Dataset:
    """The rows the search's trials fit: ``train_set`` itself when it has at most ``rows``
    rows (or ``rows`` is None); beyond, every positive and a seeded draw of the negatives at
    the rate that brings the total near ``rows`` (at least :data:`MIN_TRIAL_RATE`), each drawn
    negative's weight divided by the rate so weighted sums stay unbiased. The subset shares the
    full set's bins (LightGBM's ``Dataset.subset``: nothing is binned again), so validation
    rows binned against ``train_set`` serve both."""
    label = train_set.construct().get_label()
    if rows is None or len(label) <= rows:
        return train_set
    positive = label > 0
    rate = max((rows - int(positive.sum())) / max(int((~positive).sum()), 1), MIN_TRIAL_RATE)
    draw = np.random.default_rng([seed, 26]).random(len(label)) < rate
    kept = np.flatnonzero(positive | draw)
    weight = train_set.get_weight()
    weight = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=float)
    subset = train_set.subset(kept.tolist()).construct()
    subset.set_weight(weight[kept] * np.where(positive[kept], 1.0, 1.0 / rate))
    return subset


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
