"""Monotone constraints: declared per family in the registry, carried to LightGBM in model order."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from propensity.core.config import FeatureConfig, TrainingConfig
from propensity.features.build.registry import build_registry
from propensity.models.train import CATEGORICAL_FEATURES, lightgbm_params, monotone_vector


def test_registry_declares_directions_where_they_are_facts():
    fs = build_registry(FeatureConfig(), ["yoga"])
    directions = fs.monotone()
    assert directions["days_since_last_product_view"] == -1 and directions["days_since_last_event"] == -1
    assert directions["purchase_count_365d"] == 1 and directions["revenue_sum_365d"] == 1
    assert directions["email_open_rate_30d"] == 1 and directions["category_purchase_count_365d_yoga"] == 1
    assert directions["product_view_count_7d"] == 1 and directions["purchase_days"] == 1
    # Not facts: customer age, order values, marketer-sent e-mails, trends, and purchase recency
    # and short-window purchases (a customer who just bought may not be due again).
    for name in (
        "days_since_first_event",
        "average_order_value_365d",
        "email_send_count_30d",
        "events_trend_7d_vs_prior_30d",
        "days_since_last_purchase",
        "days_since_last_purchase_yoga",
        "purchase_count_30d",
        "revenue_sum_30d",
        "funnel_stage_30d",
    ):
        assert directions[name] == 0, name
    churn = fs.monotone(occurs=False)
    assert churn["days_since_last_event"] == 1 and churn["purchase_count_365d"] == -1


def test_constraint_vector_follows_the_model_order_with_categoricals_and_subsets():
    fs = build_registry(FeatureConfig(), []).select(include=["recency", "monetary"])
    directions = fs.monotone()
    names = ["revenue_sum_365d", *CATEGORICAL_FEATURES, "days_since_last_event", "days_since_first_event"]
    assert monotone_vector(names, directions) == [1, 0, -1, 0]
    # A categorical gets no direction even if a caller declares one; unknown names get none.
    assert monotone_vector(["loyalty_tier", "x"], {"loyalty_tier": 1, "x": 0}) == [0, 0]
    params = lightgbm_params(TrainingConfig(), 0, monotone_vector(names, directions))
    assert params["monotone_constraints"] == [1, 0, -1, 0]
    assert params["monotone_constraints_method"] == "intermediate"
    off = lightgbm_params(TrainingConfig(monotone_constraints=False), 0, [1, 0, -1, 0])
    assert "monotone_constraints" not in off


def test_a_constrained_booster_is_monotone_along_its_constrained_feature():
    rng = np.random.default_rng(0)
    n = 6000
    recency = rng.uniform(0, 365, n)
    count = rng.poisson(3, n).astype(float)
    # The truth bends: very recent buyers are a little less likely than those of a month ago,
    # which an unconstrained booster learns and a constrained one must not.
    logit = -1.0 - 0.01 * recency + 0.3 * count + 1.5 * np.exp(-(((recency - 30) / 10) ** 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"days_since_last_purchase": recency, "purchase_count_365d": count})
    vector = monotone_vector(list(frame.columns), {"days_since_last_purchase": -1, "purchase_count_365d": 1})
    grid = pd.DataFrame({"days_since_last_purchase": np.linspace(0, 365, 200), "purchase_count_365d": 3.0})

    def fit(params: dict) -> np.ndarray:
        booster = lgb.train({**params, "min_child_samples": 20}, lgb.Dataset(frame, y), 200)
        return booster.predict(grid, raw_score=True)

    free = fit(lightgbm_params(TrainingConfig(monotone_constraints=False)))
    held = fit(lightgbm_params(TrainingConfig(), 0, vector))
    assert np.any(np.diff(free) > 1e-9)  # the free booster does bend upwards somewhere
    assert np.all(np.diff(held) <= 1e-12)
