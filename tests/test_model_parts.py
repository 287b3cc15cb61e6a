"""The parts behind model choice and honest figures: bootstrap intervals, calibration choice,
BG/NBD, the linear model's explanations, the snapshot plan, purchase-cycle features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from propensity.models.bgnbd import BgNbd, fit_bgnbd
from propensity.models.bootstrap import (
    auc_ratio_interval,
    bootstrap_intervals,
    resample_weights,
    weighted_probability_metrics,
    weighted_ranking_metrics,
)
from propensity.models.calibration import Calibrator, choose_calibration
from propensity.models.linear import LinearPropensityModel, LogScaledDesign, fit_linear
from tests.test_features import PATHS, event, snapshot

# --- bootstrap --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 1), min_size=4, max_size=60),
    seed=st.integers(0, 10_000),
)
def test_weighted_metrics_equal_sklearn_on_the_resampled_rows(labels, seed):
    y = np.array(labels)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(len(y)), 1)  # coarse: many ties
    weights = next(resample_weights(len(y), 3, seed))
    ranking = weighted_ranking_metrics(y, p, weights)
    probability = weighted_probability_metrics(y, p, weights)
    for j in range(3):
        rows = np.repeat(np.arange(len(y)), weights[:, j].astype(int))
        if len(np.unique(y[rows])) < 2:
            continue
        assert ranking["auc"][j] == pytest.approx(roc_auc_score(y[rows], p[rows]))
        assert ranking["average_precision"][j] == pytest.approx(average_precision_score(y[rows], p[rows]))
        assert probability["brier"][j] == pytest.approx(brier_score_loss(y[rows], p[rows]))


def test_intervals_are_seeded_cover_the_estimate_and_pair_the_scores():
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.2).astype(int)
    good = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.15, 3000), 0.01, 0.99)
    noise = rng.random(3000)
    first = bootstrap_intervals(y, {"good": good, "noise": noise}, {"good"}, 400, seed=5, reference="good")
    again = bootstrap_intervals(y, {"good": good, "noise": noise}, {"good"}, 400, seed=5, reference="good")
    assert first == again
    low, high = first["good"]["auc"]
    assert low < roc_auc_score(y, good) < high and high - low < 0.06
    assert "brier" in first["good"] and "brier" not in first["noise"]
    assert first["good-noise"]["auc"][0] > 0.2  # a real difference is far beyond the noise
    other = bootstrap_intervals(y, {"good": good}, {"good"}, 400, seed=6)
    assert other["good"]["auc"] != first["good"]["auc"]


def test_auc_ratio_interval_is_seeded_covers_the_ratio_and_is_paired():
    rng = np.random.default_rng(4)
    y = (rng.random(2000) < 0.05).astype(int)
    oracle = y + rng.normal(0, 0.8, 2000)
    model = oracle + rng.normal(0, 0.6, 2000)
    ratio = roc_auc_score(y, model) / roc_auc_score(y, oracle)
    low, high = auc_ratio_interval(y, model, oracle, 400, seed=2)
    assert (low, high) == auc_ratio_interval(y, model, oracle, 400, seed=2)
    assert low < ratio < high < 1.0  # the noisier score never reaches the oracle
    # Paired: the ratio moves less than the model's own AUC does.
    auc_low, auc_high = bootstrap_intervals(y, {"model": model}, set(), 400, seed=2)["model"]["auc"]
    assert high - low < (auc_high - auc_low) / roc_auc_score(y, oracle)


# --- calibration --------------------------------------------------------------------------------


def test_auto_calibration_keeps_none_for_a_calibrated_score_and_isotonic_for_a_bent_score():
    rng = np.random.default_rng(0)
    raw = rng.normal(-1.5, 1.0, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-raw))).astype(int)
    choice = choose_calibration("auto", raw, y, seed=1)
    # Already calibrated: no calibrator beats the model's own probabilities beyond the interval.
    assert choice.method == "none" and choice.gain_interval[1] >= 0
    assert choice.log_loss["sigmoid"] < choice.log_loss["isotonic"]  # isotonic overfits 300 rows
    assert choice.record()["method"] == "none" and "does not beat" in choice.record()["reason"]
    raw = rng.normal(0, 1.5, 40_000)
    bent = 1 / (1 + np.exp(-(raw**3) / 2))  # far from a sigmoid of the raw score
    y = (rng.random(len(raw)) < bent).astype(int)
    choice = choose_calibration("auto", raw, y, seed=1)
    assert choice.method == "isotonic" and choice.log_loss["isotonic"] < choice.log_loss["sigmoid"]
    assert choice.gain_interval[1] < 0 and choice.log_loss["isotonic"] < choice.log_loss["none"]
    assert choose_calibration("sigmoid", raw, y, seed=1).method == "sigmoid"


def test_auto_calibration_keeps_platt_for_a_deliberately_miscalibrated_score():
    rng = np.random.default_rng(4)
    truth = rng.normal(-1.0, 1.2, 5000)
    y = (rng.random(len(truth)) < 1 / (1 + np.exp(-truth))).astype(int)
    overconfident = 3.0 * truth + 1.5  # right order, wrong probabilities
    choice = choose_calibration("auto", overconfident, y, seed=1)
    assert choice.method in ("sigmoid", "isotonic") and choice.gain_interval[1] < 0
    fitted = Calibrator(choice.method).fit(overconfident, y).transform(overconfident)
    assert abs(fitted.mean() - y.mean()) < 0.01
    assert choose_calibration("none", overconfident, y, seed=1).method == "none"
    assert np.allclose(Calibrator("none").fit(overconfident, y).transform([0.0]), 0.5)


def test_isotonic_keeps_the_raw_order_inside_its_steps():
    rng = np.random.default_rng(2)
    raw = rng.normal(0, 1, 500)
    y = (rng.random(500) < 1 / (1 + np.exp(-raw))).astype(int)
    p = Calibrator("isotonic").fit(raw, y).transform(np.sort(raw))
    assert np.all(np.diff(p) > 0)  # strictly increasing: no ties at the top step
    plain = Calibrator("isotonic").fit(raw, y)._model.predict(np.sort(raw))
    assert np.max(np.abs(p - np.clip(plain, 2e-6, 1 - 2e-6))) <= 5e-7


# --- BG/NBD -----------------------------------------------------------------------------------


def _simulate_bgnbd(truth: BgNbd, customers: int, seed: int):
    rng = np.random.default_rng(seed)
    T = rng.uniform(60, 600, customers)
    rate = rng.gamma(truth.r, 1 / truth.alpha, customers)
    drop = rng.beta(truth.a, truth.b, customers)
    x, t_x = np.zeros(customers), np.zeros(customers)
    for c in range(customers):
        t = 0.0
        while True:
            t += rng.exponential(1 / rate[c])
            if t > T[c]:
                break
            x[c], t_x[c] = x[c] + 1, t
            if rng.random() < drop[c]:
                break
    return x, t_x, T


def test_bgnbd_recovers_the_parameters_it_simulated():
    truth = BgNbd(r=0.8, alpha=40.0, a=0.9, b=3.0)
    x, t_x, T = _simulate_bgnbd(truth, 6000, seed=4)
    fitted = fit_bgnbd(x, t_x, T)
    assert fitted.r == pytest.approx(truth.r, rel=0.2) and fitted.alpha == pytest.approx(
        truth.alpha, rel=0.25
    )
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(truth.a / (truth.a + truth.b), rel=0.25)
    p = fitted.purchase_probability(
        np.array([3, 3, 0]), np.array([300, 50, 0]), np.array([310, 310, 310]), 90
    )
    assert np.all((p >= 0) & (p <= 1)) and p[0] > p[1]  # a recent buyer is likelier to buy again
    with pytest.raises(ValueError):
        fit_bgnbd(np.array([1.0]), np.array([5.0]), np.array([3.0]))


# --- the linear model ---------------------------------------------------------------------------


def _linear_model() -> tuple[LinearPropensityModel, pd.DataFrame]:
    rng = np.random.default_rng(7)
    n = 2000
    frame = pd.DataFrame(
        {
            "days": rng.exponential(60, n),
            "orders": rng.poisson(2, n).astype(float),
            "gap": np.where(rng.random(n) < 0.3, np.nan, rng.exponential(40, n)),
            "tier": rng.choice(["gold", "silver", None], n),
        }
    )
    logit = -0.02 * frame["days"] + 0.5 * frame["orders"] - 1 + np.where(frame["gap"].isna(), -0.7, 0.0)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    names = ["days", "orders", "gap", "tier"]
    model = LinearPropensityModel(
        "m", names, {n: n.title() for n in names}, {"tier": ["gold", "silver"]}, None, np.zeros(0), 0.0,
        Calibrator("sigmoid"),
    )  # fmt: skip
    matrix = model.matrix(frame)
    model.design = LogScaledDesign.fit(matrix, model.categories)
    fit_linear(
        matrix[:1500],
        frame["label"][:1500].to_numpy(),
        matrix[1500:],
        frame["label"][1500:].to_numpy(),
        model,
        0,
    )
    model.calibrator.fit(model.raw_score(frame[1500:]), frame["label"][1500:])
    return model, frame


def test_linear_contributions_are_exact_and_top_factors_come_strongest_first(tmp_path):
    model, frame = _linear_model()
    contributions = model.contributions(frame)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(frame), atol=1e-9)
    # Centred on the rows the design was fitted on: their average contribution is 0.
    assert np.abs(contributions[:, :-1].mean(axis=0)).max() < 1e-9
    assert (
        "gap" in model.design.indicators and roc_auc_score(frame["label"], model.predict_proba(frame)) > 0.7
    )
    indices, impacts = model.top_contributions(model.matrix(frame), 2)
    expected = np.argsort(-np.abs(contributions[:, :-1]), axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(impacts, np.take_along_axis(contributions[:, :-1], expected, axis=1))
    # Code written for LightGBM boosters reads it the same way.
    np.testing.assert_allclose(
        model.booster.predict(model.matrix(frame), raw_score=True), model.raw_score(frame)
    )
    assert model.booster.feature_importance("gain").shape == (4,)
    loaded = LinearPropensityModel.load(model.save(tmp_path / "m.joblib"))
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
    # Batch scoring hands it Arrow tables: the same probabilities and factors.
    probability, top, top_impacts = model.predict_and_explain(pa.Table.from_pandas(frame), 2)
    np.testing.assert_array_equal(probability, model.predict_proba(frame))
    np.testing.assert_array_equal(top, indices)
    np.testing.assert_array_equal(top_impacts, impacts)


def test_a_linear_score_does_not_depend_on_the_rows_scored_with_it():
    """Re-scoring gives the same bits whatever the chunking: a profile's probability is the same
    scored alone, in any batch, or in any order (a BLAS product's was not)."""
    model, frame = _linear_model()
    whole = model.predict_proba(frame)
    alone = np.concatenate([model.predict_proba(frame.iloc[i : i + 1]) for i in range(0, len(frame), 7)])
    np.testing.assert_array_equal(alone, whole[::7])
    chunks = np.concatenate([model.predict_proba(frame.iloc[a : a + 333]) for a in range(0, len(frame), 333)])
    np.testing.assert_array_equal(chunks, whole)
    order = np.random.default_rng(3).permutation(len(frame))
    np.testing.assert_array_equal(model.predict_proba(frame.iloc[order]), whole[order])


def test_validation_share_grows_when_the_rarer_outcome_is_scarce():
    from propensity.core.config import TrainingConfig
    from propensity.models.split import validation_share

    training = TrainingConfig(validation_profile_fraction=0.3)
    assert validation_share(pd.Series([1] * 400 + [0] * 2000), training) == 0.3
    assert validation_share(pd.Series([1] * 100 + [0] * 2000), training) == pytest.approx(0.5)
    assert validation_share(pd.Series([0] * 30 + [1] * 2000), training) == 0.6  # rare negatives too


# --- purchase-cycle features: known answers on every path ----------------------------------------

CYCLE = [
    event(200, "purchase", revenue=80.0, product_category="yoga"),
    event(150, "purchase", revenue=20.0, product_category="yoga"),
    event(150, "purchase", revenue=30.0, product_category="running", hour=15),  # same day
    event(50, "purchase", revenue=70.0, product_category="yoga"),
    event(10, "page_view"),
    event(0, "purchase", revenue=500.0, hour=0),  # at as_of: never a feature
]


@pytest.mark.parametrize("path", PATHS)
def test_purchase_cycle_known_answers(path):
    row = snapshot(CYCLE, path=path).loc["p1"]
    assert row["days_since_first_purchase"] == 200 and row["purchase_days"] == 3
    assert row["mean_days_between_purchases"] == pytest.approx(75.0)  # (200 - 50) / 2
    assert row["purchase_overdue_ratio"] == pytest.approx(50 / 75)
    assert row["purchase_days_per_30d"] == pytest.approx(30 * 3 / 200)
    assert row["average_order_value"] == pytest.approx(50.0)  # 200 over 4 orders
    values = np.array([80.0, 20.0, 30.0, 70.0])
    assert row["order_value_std"] == pytest.approx(values.std(ddof=1))
    assert row["category_purchase_days_yoga"] == 3 and row["category_purchase_days_running"] == 1
    assert row["category_mean_days_between_purchases_yoga"] == pytest.approx(75.0)
    assert pd.isna(row["category_mean_days_between_purchases_running"])
    assert row["category_days_since_first_purchase_running"] == 150
    assert row["category_average_order_value_yoga"] == pytest.approx(170 / 3)
    assert pd.isna(row["purchase_day_dispersion"])  # first purchase within the four quarters
    # Purchase days per 90-day quarter (newest first): 1 (day 10), 3 (94, 95, 100), 2, 1 (300).
    spread = [event(d, "purchase", revenue=10.0) for d in (400, 300, 250, 200, 100, 95, 94, 10)]
    quarters = np.array([1, 3, 2, 1])
    assert snapshot(spread, path=path).loc["p1", "purchase_day_dispersion"] == pytest.approx(
        quarters.var(ddof=1) / quarters.mean()
    )
    # One purchase day: no gap, no overdue ratio, no spread.
    single = snapshot([event(30, "purchase", revenue=10.0)], path=path).loc["p1"]
    assert single["purchase_days"] == 1 and pd.isna(single["mean_days_between_purchases"])
    assert pd.isna(single["purchase_overdue_ratio"]) and pd.isna(single["order_value_std"])
