"""The convex blend of logistic, Platt(BG/NBD) and LightGBM: weights, exact factors, storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import OutcomeConfig, TrainingConfig
from propensity.models.bgnbd_model import shapley_against_reference
from propensity.models.blend import BlendPropensityModel, choose_weights, simplex_grid
from propensity.models.estimator import load_model
from propensity.models.scoring import score_batch
from propensity.models.split import split
from propensity.models.train import fit_candidates

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the fitted blend)
# are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("blend")


@pytest.mark.parametrize("families", [1, 2, 3, 4])
def test_the_weight_grid_is_the_whole_simplex_in_steps(families):
    grid = simplex_grid(families, 0.05)
    assert np.all(grid >= 0) and np.allclose(grid.sum(axis=1), 1.0)
    # Compositions of 20 steps into `families` parts: C(20 + families - 1, families - 1).
    from math import comb

    assert len(grid) == comb(20 + families - 1, families - 1)
    assert len({tuple(row) for row in np.round(grid, 9)}) == len(grid)


@settings(max_examples=40, deadline=None)
@given(
    coefficients=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    interaction=st.floats(-2, 2),
    seed=st.integers(0, 1000),
)
def test_shapley_values_are_exact_and_split_an_interaction_by_marginal_effects(
    coefficients, interaction, seed
):
    rng = np.random.default_rng(seed)
    values, reference = rng.normal(size=(20, 3)), rng.normal(size=3)
    c = np.asarray(coefficients)

    def function(x: np.ndarray) -> np.ndarray:
        return x @ c + interaction * x[:, 0] * x[:, 1]

    phi = shapley_against_reference(function, values, reference)
    np.testing.assert_allclose(phi.sum(axis=1), function(values), atol=1e-9)
    np.testing.assert_allclose(phi[:, 2], c[2] * (values[:, 2] - reference[2]), atol=1e-9)
    # The product's change x0 x1 - r0 r1, split as Shapley says: each input gets the mean of its
    # two marginal effects, (x0 - r0) (r1 + x1) / 2 for the first.
    d = values - reference
    np.testing.assert_allclose(
        phi[:, 0], c[0] * d[:, 0] + interaction * d[:, 0] * (reference[1] + values[:, 1]) / 2, atol=1e-9
    )
    np.testing.assert_allclose(
        phi[:, 1], c[1] * d[:, 1] + interaction * d[:, 1] * (reference[0] + values[:, 0]) / 2, atol=1e-9
    )


def test_weights_go_to_the_informative_score_and_mix_two_halves():
    rng = np.random.default_rng(0)
    n = 6000
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(a + b)))).astype(int)
    noise = rng.normal(size=n)
    alone = choose_weights({"noise": noise, "signal": 2 * (a + b)}, {"noise": True, "signal": True}, y, 0)
    assert alone.weights == {"noise": 0.0, "signal": 1.0} and alone.single_family() == "signal"
    # Each score knows half the truth: the blend needs both, in log-odds they add up.
    halves = choose_weights({"a": a, "b": b}, {"a": True, "b": True}, y, 0)
    assert 0.3 <= halves.weights["a"] <= 0.7 and halves.single_family() is None
    again = choose_weights({"a": a, "b": b}, {"a": True, "b": True}, y, 0)
    assert again.weights == halves.weights


def _stacked(seed: int = 3, profiles: int = 4000) -> pd.DataFrame:
    """Stacked snapshots with purchase histories whose next purchase follows BG/NBD-like rhythm
    plus a signal only the other features carry (so each family knows something)."""
    rng = np.random.default_rng(seed)
    frames = []
    rate = rng.gamma(2.0, 1 / 60, profiles)
    alive = rng.uniform(size=profiles) < 0.7
    first = rng.uniform(100, 500, profiles)
    channel = rng.choice(["web", "store", "app"], profiles)
    for k, as_of in enumerate(pd.date_range("2024-01-01", periods=4, freq="28D")):
        age = first + 28 * k
        days = 1 + rng.poisson(rate * age)
        since_last = np.minimum(rng.exponential(1 / np.maximum(rate, 1e-3)) * np.where(alive, 1, 3), age)
        promo = rng.normal(size=profiles)
        logit = -1.0 + 2.5 * alive * (1 - np.exp(-rate * 60)) + 0.8 * promo + 0.4 * (channel == "app")
        label = (rng.uniform(size=profiles) < 1 / (1 + np.exp(-logit))).astype(int)
        frames.append(
            pd.DataFrame(
                {
                    "profile_id": [f"p{i}" for i in range(profiles)],
                    "as_of": as_of,
                    "purchase_days": days.astype(float),
                    "days_since_first_purchase": age,
                    "days_since_last_purchase": since_last,
                    "promo_affinity": promo,
                    "loyalty_tier": channel,
                    "label": label,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def blended():
    frame = _stacked()
    names = [c for c in frame.columns if c not in ("profile_id", "as_of", "label")]
    training = TrainingConfig(tuning={"trials": 1}, min_positives=50, min_negatives=50)
    parts = split(frame, training)
    trained = fit_candidates(
        parts,
        names,
        {n: n.replace("_", " ") for n in names},
        training,
        "m",
        None,
        OutcomeConfig(horizon_days=60),
    )
    return trained, parts


def test_the_blend_contains_every_family_and_its_factors_add_up_to_its_log_odds(blended, tmp_path):
    trained, parts = blended
    families = [c.family for c in trained.candidates]
    assert families[:3] == ["lightgbm", "logistic", "bgnbd"], trained.reason
    assert trained.candidates[2].model.calibrator.method == "sigmoid"  # BG/NBD: always Platt-scaled
    model = trained.model
    assert isinstance(model, BlendPropensityModel), trained.reason
    assert len(model.families) >= 2 and np.isclose(model.weights.sum(), 1.0) and np.all(model.weights > 0)
    test = parts.test
    contributions = model.contributions(test)
    raw = model.raw_score(test)
    np.testing.assert_allclose(contributions.sum(axis=1), raw, rtol=0, atol=1e-9)
    # The blend's log-odds are the weighted Platt-mapped log-odds of its families.
    expected = sum(
        w * (a * c.raw_score(test) + b)
        for c, w, a, b in zip(model.components, model.weights, model.slopes, model.offsets, strict=True)
    )
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict_proba(test), model.calibrator.transform(raw))
    # Saved with skops (allow-listed types only) and read back: the same probabilities and factors.
    loaded = load_model(model.save(tmp_path / "blend.skops"))
    assert type(loaded) is BlendPropensityModel
    np.testing.assert_array_equal(loaded.predict_proba(test), model.predict_proba(test))
    np.testing.assert_array_equal(loaded.contributions(test), contributions)


def test_the_blend_scores_through_the_batch_path_with_its_strongest_factors(blended):
    trained, parts = blended
    model = trained.model
    model.metadata["reference_probabilities"] = np.quantile(
        model.predict_proba(parts.test), np.linspace(0, 1, 101)
    ).tolist()
    rows = parts.test.head(300)
    table = pa.Table.from_pandas(rows[["profile_id", *model.feature_names]], preserve_index=False)
    import datetime as dt

    scored = score_batch(
        model,
        table,
        model_name="m",
        model_version="1",
        as_of=dt.date(2024, 4, 1),
        factors=3,
        scored_at=dt.datetime(2024, 4, 1, tzinfo=dt.UTC),
    ).to_pylist()
    # The written probability is predict_proba's to the bit.
    np.testing.assert_array_equal([r["probability"] for r in scored], model.predict_proba(rows))
    contributions = model.contributions(rows)[:, :-1]
    for row, values in zip(scored, contributions, strict=True):
        strongest = np.sort(np.abs(values))[::-1][: len(row["factors"])]
        np.testing.assert_allclose([abs(f["impact"]) for f in row["factors"]], strongest, rtol=1e-12)
