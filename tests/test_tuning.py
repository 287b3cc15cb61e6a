"""The LightGBM search: trials on a reweighted sample of many training rows, the chosen
parameters fitted on every row, the thread count and the same model from the same data."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from propensity.core.config import TrainingConfig
from propensity.models.train import ONE_THREAD_CELLS, lightgbm_params
from propensity.models.tuning import MIN_TRIAL_RATE, _fit_trial, search_lightgbm, trial_subset


def rows(n: int, seed: int, positive_rate: float = 0.1) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` rows of six features, the label a noisy logistic function of the first three."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    logit = X["f0"] + 0.5 * X["f1"] - 0.5 * X["f2"] + np.log(positive_rate / (1 - positive_rate))
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def dataset(X: pd.DataFrame, y: np.ndarray, weight: np.ndarray | None = None) -> lgb.Dataset:
    return lgb.Dataset(
        X, label=y, weight=weight, params={"feature_pre_filter": False, "verbosity": -1}, free_raw_data=False
    ).construct()


@pytest.mark.parametrize("weighted", [False, True])
def test_trial_subset_keeps_every_positive_and_reweights_the_drawn_negatives(weighted):
    X, y = rows(20_000, 1)
    weight = np.random.default_rng(2).choice([1.0, 5.0], len(y)) if weighted else None
    full = dataset(X, y, weight)
    sub = trial_subset(full, 6_000, seed=7)
    label, w = sub.get_label(), sub.get_weight()
    positives, negatives = int(y.sum()), len(y) - int(y.sum())
    rate = (6_000 - positives) / negatives
    assert int(label.sum()) == positives  # every positive
    assert abs(sub.num_data() - 6_000) < 4 * np.sqrt(negatives * rate)  # near the budget
    base = np.ones(len(y)) if weight is None else weight
    # Each drawn negative weighs its own weight / rate; positives keep theirs.
    kept = np.isin(np.round(w[label == 1], 5), base[y == 1])  # LightGBM keeps float32 weights
    assert kept.all()
    assert np.isin(np.round(w[label == 0] * rate, 5), base[y == 0]).all()
    # Weighted negatives estimate the full set's: within 4 standard errors of the draw.
    drawn_sum, full_sum = w[label == 0].sum(), base[y == 0].sum()
    assert abs(drawn_sum - full_sum) < 4 * np.sqrt(((base[y == 0] / rate) ** 2 * rate * (1 - rate)).sum())
    # Same bins as the full set (nothing binned again), same rows for the same seed.
    assert [sub.feature_num_bin(j) for j in range(6)] == [full.feature_num_bin(j) for j in range(6)]
    again = trial_subset(dataset(X, y, weight), 6_000, seed=7)
    assert np.array_equal(again.get_label(), label) and np.array_equal(again.get_weight(), w)
    assert trial_subset(dataset(X, y, weight), 6_000, seed=8).num_data() != sub.num_data()


def test_trial_subset_is_the_set_itself_within_the_budget_and_keeps_a_floor_rate():
    X, y = rows(5_000, 3, positive_rate=0.5)
    full = dataset(X, y)
    assert trial_subset(full, 5_000, 0) is full and trial_subset(full, None, 0) is full
    # The positives alone exceed the budget: negatives still drawn at the floor rate.
    sub = trial_subset(full, 1_000, 0)
    negatives = (sub.get_label() == 0).sum()
    assert int(sub.get_label().sum()) == int(y.sum())
    assert 0.5 * MIN_TRIAL_RATE * (y == 0).sum() < negatives < 1.5 * MIN_TRIAL_RATE * (y == 0).sum()
    assert np.allclose(sub.get_weight()[sub.get_label() == 0], 1 / MIN_TRIAL_RATE)


def untimed(trials: list[dict]) -> list[dict]:
    """Trial records without their seconds (the machine's, not the data's)."""
    return [{k: v for k, v in t.items() if k != "seconds"} for t in trials]


def search(train: tuple, valid: tuple, trial_rows: int | None, threads: int = 1):
    training = TrainingConfig(
        tuning={"trials": 3, "trial_rows": trial_rows, "max_boost_rounds": 200},
        early_stopping_rounds=10,
        lightgbm={"num_threads": threads},
    )
    train_set = dataset(*train)
    valid_set = lgb.Dataset(
        valid[0], label=valid[1], reference=train_set, params={"feature_pre_filter": False, "verbosity": -1}
    )
    params = lightgbm_params(training)
    result = search_lightgbm(train_set, valid_set, valid[0], valid[1], params, training)
    return result, train_set, valid_set, training


def test_sampled_trials_then_the_chosen_parameters_fitted_on_every_row():
    train, valid = rows(12_000, 4), rows(3_000, 5)
    result, train_set, valid_set, _ = search(train, valid, trial_rows=4_000)
    assert 3_000 < result.trial_rows < 5_000 and len(result.trials) == 3
    # The registered booster is the chosen parameters' fit on all 12,000 rows, stopped early.
    params = {k: v for k, v in result.params.items() if k != "num_boost_round"}
    full = _fit_trial(params, result.params["num_boost_round"], train_set, valid_set, 10)
    assert result.booster_text == full.model_to_string(num_iteration=full.best_iteration)
    assert result.best_iteration == full.best_iteration
    # Not any trial's booster: those fitted the sample (their records are the sample's).
    unsampled, *_ = search(train, valid, trial_rows=None)
    assert unsampled.trial_rows == 12_000 and untimed(unsampled.trials) != untimed(result.trials)


@pytest.mark.parametrize("threads", [1, 2])
def test_same_data_same_model_on_one_or_two_threads(threads):
    train, valid = rows(8_000, 6), rows(2_000, 7)
    first, *_ = search(train, valid, trial_rows=3_000, threads=threads)
    second, *_ = search(train, valid, trial_rows=3_000, threads=threads)
    assert first.booster_text == second.booster_text

    assert untimed(first.trials) == untimed(second.trials)


def test_two_threads_from_the_cells_threshold_unless_the_config_sets_them():
    training = TrainingConfig()
    assert lightgbm_params(training, ONE_THREAD_CELLS - 1)["num_threads"] == 1
    assert lightgbm_params(training, ONE_THREAD_CELLS)["num_threads"] == 2
    assert lightgbm_params(TrainingConfig(lightgbm={"num_threads": 1}), ONE_THREAD_CELLS)["num_threads"] == 1


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_when_idle_unless_the_user_says_otherwise(given, expected):
    """The train job's imports set OpenMP's wait policy before lightgbm loads its OpenMP library
    (which reads it once, on load); a value already set is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import sys, importlib.abc\n"
        "seen = {}\n"
        "class Watch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'lightgbm' and 'policy' not in seen:\n"
        "            import os; seen['policy'] = os.environ.get('OMP_WAIT_POLICY')\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import propensity.pipeline.jobs.train\n"
        "print(seen['policy'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
