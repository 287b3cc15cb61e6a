"""Measured lift against a holdout: intervals that cover the simulated truth, the regression
adjustment narrows them, and the power calculation means what it says."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from propensity.core.power import minimum_detectable_lift, plan, required_holdout
from propensity.features.synthetic.campaigns import in_memory_campaign
from propensity.models.lift import _POISSON, Arms, measure_lift

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the two sets of
# 200 simulated campaigns) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("lift")

REPETITIONS = 200


def _arms(truth, covariates=True):
    pre = np.column_stack([truth.pre_purchases, truth.pre_revenue]) if covariates else None
    return Arms(truth.treated, truth.converted, truth.revenue, pre)


def _run(exact_rows: int, resamples: int) -> dict[str, np.ndarray]:
    """Per repetition: estimate, interval and truth of the absolute and revenue lifts."""
    rows = {k: [] for k in ("truth_y", "truth_r", "raw", "adj", "rev", "adj_rev")}
    bounds = {k: [] for k in ("raw", "adj", "rev", "adj_rev")}
    names = {
        "raw": "absolute_lift",
        "adj": "adjusted_absolute_lift",
        "rev": "revenue_per_member_lift",
        "adj_rev": "adjusted_revenue_per_member_lift",
    }
    for rep in range(REPETITIONS):
        truth = in_memory_campaign(6000, seed=10_000 + rep)
        true = truth.true_lift()
        rows["truth_y"].append(true["absolute_lift"])
        rows["truth_r"].append(true["revenue_per_member_lift"])
        found = {e.metric: e for e in measure_lift(_arms(truth), resamples, seed=rep, exact_rows=exact_rows)}
        for key, metric in names.items():
            rows[key].append(found[metric].estimate)
            bounds[key].append((found[metric].low, found[metric].high))
    out = {k: np.array(v) for k, v in rows.items()}
    out |= {f"{k}_bounds": np.array(v) for k, v in bounds.items()}
    return out


# At least this many of 200 intervals cover the truth unless coverage is below 95 % (0.1 % risk).
_MIN_COVERED = int(stats.binom.ppf(0.001, REPETITIONS, 0.95))


@pytest.fixture(
    scope="module", params=[("bootstrap", 10**9, 400), ("large-sample", 0, 1000)], ids=lambda p: p[0]
)
def repetitions(request):
    _, exact_rows, resamples = request.param
    return _run(exact_rows, resamples)


@pytest.mark.parametrize(
    ("key", "truth"), [("raw", "truth_y"), ("adj", "truth_y"), ("rev", "truth_r"), ("adj_rev", "truth_r")]
)
def test_intervals_cover_the_simulated_lift(repetitions, key, truth):
    low, high = repetitions[f"{key}_bounds"].T
    true = repetitions[truth]
    covered = int(((low <= true) & (true <= high)).sum())
    assert covered >= _MIN_COVERED, f"{covered}/{REPETITIONS} intervals cover the true lift"
    # Not by being wide: the mean half-width is the spread of the errors across repetitions.
    errors = repetitions[key] - true
    half_width = ((high - low) / 2).mean()
    assert 0.8 < half_width / (1.96 * errors.std()) < 1.25
    assert abs(errors.mean()) < 3 * errors.std() / np.sqrt(REPETITIONS)  # unbiased


def test_adjustment_narrows_the_interval_when_the_pre_period_predicts(repetitions):
    for raw, adjusted in (("raw", "adj"), ("rev", "adj_rev")):
        width_raw = np.diff(repetitions[f"{raw}_bounds"], axis=1).mean()
        width_adjusted = np.diff(repetitions[f"{adjusted}_bounds"], axis=1).mean()
        assert width_adjusted < 0.95 * width_raw
        # ...and the adjusted estimates really do scatter less around the truth.
        truth = repetitions["truth_y" if raw == "raw" else "truth_r"]
        assert (repetitions[adjusted] - truth).std() < (repetitions[raw] - truth).std()


def test_a_useless_covariate_changes_nothing_much():
    truth = in_memory_campaign(20_000, seed=3)
    noise = np.random.default_rng(0).normal(size=len(truth))
    found = {
        e.metric: e for e in measure_lift(Arms(truth.treated, truth.converted, truth.revenue, noise), 1000)
    }
    raw, adjusted = found["absolute_lift"], found["adjusted_absolute_lift"]
    assert (adjusted.high - adjusted.low) == pytest.approx(raw.high - raw.low, rel=0.1)
    assert adjusted.estimate == pytest.approx(raw.estimate, abs=0.2 * (raw.high - raw.low))


def test_figures_are_seeded_and_consistent():
    truth = in_memory_campaign(5000, seed=4)
    first = measure_lift(_arms(truth), 300, seed=1, cost=5000.0)
    assert first == measure_lift(_arms(truth), 300, seed=1, cost=5000.0)
    assert first != measure_lift(_arms(truth), 300, seed=2, cost=5000.0)
    found = {e.metric: e for e in first}
    treated, holdout = truth.treated, ~truth.treated
    assert found["targeted_rate"].estimate == pytest.approx(truth.converted[treated].mean())
    assert found["holdout_order_value"].estimate == pytest.approx(
        truth.revenue[holdout].sum() / truth.converted[holdout].sum()
    )
    lift = truth.revenue[treated].mean() - truth.revenue[holdout].mean()
    assert found["incremental_revenue"].estimate == pytest.approx(lift * treated.sum())
    assert found["return_on_spend"].estimate == pytest.approx((lift * treated.sum() - 5000) / 5000)
    assert found["targeted_rate"].p_value is None and found["absolute_lift"].p_value < 1e-6
    with pytest.raises(ValueError, match="both arms"):
        measure_lift(Arms(np.ones(10, bool), np.zeros(10), np.zeros(10)))


def test_poisson_weights_have_mean_and_variance_one():
    assert _POISSON.mean() == pytest.approx(1.0, abs=1e-4)
    assert _POISSON.var() == pytest.approx(1.0, abs=1e-4)


def test_minimum_detectable_lift_is_detected_80_percent_of_the_time():
    rng = np.random.default_rng(5)
    # (Large enough arms for the normal approximation: 500 expected holdout conversions.)
    base, targeted, holdout, trials = 0.05, 90_000, 10_000, 4000
    lift = minimum_detectable_lift(base, targeted, holdout)
    t = rng.binomial(targeted, base + lift, trials) / targeted
    h = rng.binomial(holdout, base, trials) / holdout
    z = (t - h) / np.sqrt(t * (1 - t) / targeted + h * (1 - h) / holdout)
    rejected = int((np.abs(z) > 1.959964).sum())
    low, high = stats.binom.interval(0.999, trials, 0.8)
    assert low <= rejected <= high


def test_required_holdout_is_the_smallest_that_detects():
    needed = required_holdout(0.05, 0.01, 100_000)
    assert minimum_detectable_lift(0.05, 100_000 - needed, needed) <= 0.01
    assert minimum_detectable_lift(0.05, 100_000 - needed + 1, needed - 1) > 0.01
    assert required_holdout(0.05, 0.001, 2000) is None
    planned = plan(20_000, 0.1, 0.05, expected_lift=0.01)
    assert (planned.targeted, planned.holdout, planned.holdout_needed) == (18_000, 2000, needed_for(20_000))


def needed_for(audience):
    return required_holdout(0.05, 0.01, audience)
