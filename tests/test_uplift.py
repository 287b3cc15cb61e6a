"""Uplift models: the treatment config, the T- and X-learners, their exact factors, the Qini and
targeting figures, and the `uplift` column of the score table.

The fixture is a small randomised campaign with known effects: ``x0`` drives who buys anyway
(the propensity), ``x1`` and the loyalty tier who is persuaded by a contact; people with low
``x1`` are slightly put off by it. Each row's true effect is known.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import ModelConfig, TrainingConfig, TreatmentConfig, parse_config
from propensity.core.errors import UserError
from propensity.core.score_table import batch_schema
from propensity.models.estimator import load_model, save_model
from propensity.models.scoring import score_batch
from propensity.models.uplift import ArmRows, UpliftModel, fit_uplift
from propensity.models.uplift_metrics import evaluate_uplift, qini_coefficient, uplift_at_k
from propensity.pipeline.jobs.uplift import arms_from_memberships

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the uplift model
# fitted on 20,000 rows) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("uplift")

NAMES = ["x0", "x1", "x2", "x3", "loyalty_tier"]
TIERS = ["bronze", "gold", "silver"]


def campaign(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with arm, outcome and features; and each row's true effect of contact."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.uniform(size=n) for i in range(4)})
    frame["loyalty_tier"] = rng.choice(TIERS, size=n)
    base = 1 / (1 + np.exp(-(-3 + 3.5 * frame["x0"].to_numpy())))
    persuadable = (frame["x1"].to_numpy() > 0.6) | (frame["loyalty_tier"].to_numpy() == "gold")
    effect = np.where(persuadable, 0.25, -0.03) * (1 - frame["x0"].to_numpy())
    treated = rng.random(n) < 0.5
    frame["treated"] = treated.astype(int)
    frame["label"] = (rng.random(n) < base + treated * effect).astype(int)
    frame["profile_id"] = [f"p{seed}-{i}" for i in range(n)]
    return frame, effect


@pytest.fixture(scope="module")
def fitted() -> tuple[UpliftModel, dict[str, float]]:
    train, _ = campaign(20_000, 1)
    valid, _ = campaign(8_000, 2)
    treatment = TreatmentConfig(event_type="email_open", learners=["t", "x"])
    return fit_uplift(
        ArmRows(train, valid), NAMES, {n: n.upper() for n in NAMES}, TrainingConfig(), treatment, "u"
    )


@pytest.fixture(scope="module")
def test_rows() -> tuple[pd.DataFrame, np.ndarray]:
    return campaign(8_000, 3)


def _as(model: UpliftModel, learner: str) -> UpliftModel:
    """The same fitted parts combined by another learner."""
    return UpliftModel(
        model.name,
        learner,
        model.feature_names,
        model.feature_labels,
        model.categories,
        model.treated,
        model.control,
        model.effects,
        model.treated_share,
    )


# -- config --------------------------------------------------------------------------------------


def test_treatment_config_is_validated():
    config = parse_config(
        ModelConfig, {"name": "u", "treatment": {"event_type": "email_open", "campaign": "yoga"}}, "u.yaml"
    )
    assert config.treatment.campaign == "yoga" and config.treatment.learners == ["t", "x"]
    by_arm = {"segment": "yoga", "memberships_dir": "work/segments"}
    assert parse_config(ModelConfig, {"name": "u", "treatment": by_arm}, "u.yaml").treatment.segment == "yoga"
    assert parse_config(ModelConfig, {"name": "u"}, "u.yaml").treatment is None
    refused = {
        "exactly one": {"treatment": {}},
        "needs one": {"treatment": {"segment": "s", "memberships_dir": "m", "campaign": "c"}},
        "memberships_dir": {"treatment": {"segment": "s"}},
        "not the conversion": {"treatment": {"event_type": "purchase"}},
        "unique": {"treatment": {"event_type": "email_open", "learners": ["t", "t"]}},
        "window_days": {"treatment": {"event_type": "email_open", "window_days": 0}},
    }
    for words, data in refused.items():
        with pytest.raises(UserError, match=words):
            parse_config(ModelConfig, {"name": "u", **data}, "u.yaml")


def test_too_few_treated_rows_is_a_clear_error():
    train, _ = campaign(2_000, 5)
    train["treated"] = (np.arange(len(train)) < 50).astype(int)
    with pytest.raises(UserError, match=r"50 treated and 1950 control rows in the training snapshots"):
        fit_uplift(
            ArmRows(train, campaign(2_000, 6)[0]),
            NAMES,
            {},
            TrainingConfig(),
            TreatmentConfig(event_type="email_open"),
            "u",
        )


# -- learners ------------------------------------------------------------------------------------


def test_the_learner_with_the_best_validation_qini_is_kept(fitted):
    model, qini = fitted
    assert set(qini) == {"t", "x"} and model.learner == max(qini, key=qini.get)
    assert model.metadata["validation_qini"] == qini and len(model.effects) == 2
    assert model.metadata["factor_space"] == {"t": "log_odds", "x": "probability"}[model.learner]


def test_fitting_is_deterministic(fitted):
    train, _ = campaign(20_000, 1)
    valid, _ = campaign(8_000, 2)
    again, qini = fit_uplift(
        ArmRows(train, valid),
        NAMES,
        {n: n.upper() for n in NAMES},
        TrainingConfig(),
        TreatmentConfig(event_type="email_open"),
        "u",
    )
    model, first = fitted
    assert qini == first
    parts = [
        (a.booster_text, b.booster_text)
        for a, b in zip(
            [model.treated, model.control, *model.effects],
            [again.treated, again.control, *again.effects],
            strict=True,
        )
    ]
    assert all(a == b for a, b in parts)


@pytest.mark.parametrize("learner", ["t", "x"])
def test_uplift_and_factors_are_exact(fitted, test_rows, learner):
    model = _as(fitted[0], learner)
    frame, _ = test_rows
    table = pa.Table.from_pandas(frame[NAMES].iloc[:2000], preserve_index=False)
    rows = model.rows(table)
    mu1 = model.treated.booster.predict(rows, raw_score=True)
    mu0 = model.control.booster.predict(rows, raw_score=True)
    probability, uplift = model.predict(table)
    assert np.allclose(probability, 1 / (1 + np.exp(-mu1)), atol=1e-12)
    contributions = model.contributions(table)
    if learner == "t":
        assert np.allclose(uplift, 1 / (1 + np.exp(-mu1)) - 1 / (1 + np.exp(-mu0)), atol=1e-12)
        # log-odds factors: each feature's mu1 contribution less its mu0 contribution
        difference = model.treated.booster.predict(rows, pred_contrib=True) - model.control.booster.predict(
            rows, pred_contrib=True
        )
        assert np.allclose(contributions, difference, atol=1e-9)
        assert np.allclose(contributions.sum(axis=1), mu1 - mu0, atol=1e-9)
    else:
        tau1, tau0 = (m.booster.predict(rows) for m in model.effects)
        g = model.treated_share
        assert np.allclose(uplift, g * tau0 + (1 - g) * tau1, atol=1e-12)
        assert np.allclose(contributions.sum(axis=1), uplift, atol=1e-9)
    # The top factors are the strongest of the full contributions, in order.
    _, _, indices, impacts = model.predict_and_explain(table, 3)
    strongest = np.sort(np.abs(contributions[:, :-1]), axis=1)[:, ::-1][:, :3]
    assert np.allclose(np.abs(impacts), strongest, atol=1e-9)
    assert np.allclose(np.take_along_axis(contributions[:, :-1], indices, axis=1), impacts, atol=1e-9)


@pytest.mark.parametrize("learner", ["t", "x"])
def test_scoring_predicts_in_the_explaining_pass(fitted, test_rows, learner):
    """predict_and_explain predicts from the TreeSHAP pass itself (no booster.predict): the
    probability if contacted is LightGBM's bit for bit (the T-learner's uplift too); every
    feature's factor equals the slow reference built from each part's pred_contrib and they add
    up, with the bias, to the uplift's raw score; a second pass is identical."""
    model = _as(fitted[0], learner)
    frame = test_rows[0][NAMES].iloc[:3000].copy()
    frame.loc[frame.index[::7], "x1"] = np.nan  # missing values take the booster's default way
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rows = model.rows(table)
    probability, uplift = model.predict(table)
    scored = model.predict_and_explain(table, len(NAMES))
    assert np.array_equal(scored[0], probability)
    if learner == "t":
        assert np.array_equal(scored[1], uplift)
        raw = model.treated.booster.predict(rows, raw_score=True) - model.control.booster.predict(
            rows, raw_score=True
        )
        reference = model.treated.booster.predict(rows, pred_contrib=True) - model.control.booster.predict(
            rows, pred_contrib=True
        )
    else:
        assert np.allclose(scored[1], uplift, rtol=0, atol=1e-12)
        raw = uplift
        g = model.treated_share
        tau1, tau0 = (m.booster.predict(rows, pred_contrib=True) for m in model.effects)
        reference = (1 - g) * tau1 + g * tau0
    indices, impacts = scored[2], scored[3]
    assert np.allclose(np.take_along_axis(reference[:, :-1], indices, axis=1), impacts, rtol=0, atol=1e-9)
    assert np.allclose(impacts.sum(axis=1) + model.explainer.expected_value, raw, rtol=0, atol=1e-9)
    assert np.allclose(model.explainer.expected_value, reference[0, -1], rtol=0, atol=1e-9)
    again = _as(fitted[0], learner).predict_and_explain(table, len(NAMES))
    assert all(np.array_equal(a, b) for a, b in zip(scored, again, strict=True))


def test_an_uplift_model_survives_skops(fitted, test_rows, tmp_path):
    model, _ = fitted
    table = pa.Table.from_pandas(test_rows[0][NAMES].iloc[:500], preserve_index=False)
    loaded = load_model(save_model(model, tmp_path / "uplift.skops"))
    assert isinstance(loaded, UpliftModel) and loaded.learner == model.learner
    for a, b in zip(model.predict_and_explain(table, 3), loaded.predict_and_explain(table, 3), strict=True):
        assert np.array_equal(a, b)


# -- evaluation ----------------------------------------------------------------------------------


def test_qini_and_uplift_at_k_by_hand():
    # Ranked: two treated buyers, a control non-buyer, a treated non-buyer, a control buyer.
    y = np.array([1, 1, 0, 0, 1])
    t = np.array([1, 1, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # Curve (y_t - y_c n_t / n_c): 1, 2, 2, 2, 2 - 1*3/2 = 0.5; random line 0.1, 0.2, ... 0.5.
    curve = np.array([1, 2, 2, 2, 0.5])
    assert qini_coefficient(y, t, score) == pytest.approx((curve - 0.1 * np.arange(1, 6)).mean() / 5)
    assert uplift_at_k(y, t, score, 0.6) == pytest.approx(1.0 - 0.0)
    assert uplift_at_k(y, t, score, 1.0) == pytest.approx(2 / 3 - 1 / 2)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_the_oracle_ranking_has_the_best_expected_qini(seed):
    """With outcomes drawn from known effects, ranking by the true effect beats ranking at random
    on average (Qini of a random ranking is 0 in expectation)."""
    rng = np.random.default_rng(seed)
    n = 4000
    effect = rng.uniform(-0.1, 0.4, size=n)
    t = rng.random(n) < 0.5
    y = (rng.random(n) < 0.2 + t * effect).astype(int)
    assert qini_coefficient(y, t, effect) > qini_coefficient(y, t, rng.permutation(effect))


def test_uplift_targeting_beats_propensity_targeting(fitted, test_rows):
    model, _ = fitted
    frame, effect = test_rows
    probability, uplift = model.predict(pa.Table.from_pandas(frame[NAMES], preserve_index=False))
    ev = evaluate_uplift(
        frame["label"],
        frame["treated"],
        uplift,
        probability,
        fraction=0.2,
        resamples=500,
        seed=7,
        true_effect=effect,
    )
    # The top 20 % by uplift yields more incremental conversions than by propensity, beyond the
    # interval of the difference (measured on the same resamples).
    assert ev.incremental_difference.low > 0
    assert ev.incremental_uplift.low > ev.incremental_propensity.value
    # The model's Qini is positive beyond its interval and within reach of the oracle's.
    assert ev.qini.low > 0 and ev.oracle_qini is not None
    assert ev.qini.value > 0.5 * ev.oracle_qini and ev.qini.low <= ev.oracle_qini + 1e-3
    # The expected incremental conversions from the true effects agree in direction.
    top = np.argsort(-uplift, kind="stable")[: len(uplift) // 5]
    by_p = np.argsort(-probability, kind="stable")[: len(uplift) // 5]
    assert effect[top].sum() > effect[by_p].sum()
    logged = ev.metrics()
    assert logged["test_qini_low"] <= logged["test_qini"] <= logged["test_qini_high"]
    assert "test_oracle_qini" in logged and logged["test_uplift_positives"] == frame["label"].sum()


# -- scoring -------------------------------------------------------------------------------------


def test_score_batch_adds_uplift_after_bucket(fitted, test_rows):
    model, _ = fitted
    frame = test_rows[0].iloc[:300]
    model.metadata["buckets"] = {"medium": 40, "high": 70}
    scored = score_batch(
        model,
        frame[["profile_id", *NAMES]],
        model_name="u",
        model_version="1",
        as_of=dt.date(2025, 1, 1),
        factors=3,
        scored_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    assert scored.schema == batch_schema([], uplift=True)
    assert scored.schema.names.index("uplift") == scored.schema.names.index("bucket") + 1
    probability, uplift, _, impacts = model.predict_and_explain(
        pa.Table.from_pandas(frame[NAMES], preserve_index=False), 3
    )
    assert np.array_equal(scored["uplift"].to_numpy(), uplift)
    assert np.array_equal(scored["probability"].to_numpy(), probability)
    first = scored["factors"][0].as_py()
    assert [f["impact"] for f in first] == list(impacts[0][impacts[0] != 0])
    assert "uplift" not in batch_schema([]).names


# -- arms from a past export ----------------------------------------------------------------------


def _memberships(root, as_of: str, rows: list[tuple[str, str, str | None]]) -> None:
    folder = root / f"as_of={as_of}"
    folder.mkdir(parents=True)
    profile, status, arm = zip(*rows, strict=True)
    frame = pd.DataFrame({"profile_id": profile, "segment": "yoga", "status": status, "arm": arm})
    frame.assign(as_of=dt.date.fromisoformat(as_of)).to_parquet(folder / "memberships.parquet", index=False)


def test_arms_from_memberships_take_the_latest_placement_in_the_window(tmp_path):
    _memberships(tmp_path, "2025-03-01", [("a", "realized", "targeted"), ("b", "realized", "holdout")])
    _memberships(
        tmp_path,
        "2025-03-05",
        [("a", "existing", "holdout"), ("b", "exited", "holdout"), ("c", "realized", None)],
    )
    treatment = TreatmentConfig(segment="yoga", memberships_dir=str(tmp_path), window_days=7)
    rows = pd.DataFrame(
        {
            "profile_id": ["a", "b", "c", "d", "a", "b"],
            "as_of": pd.to_datetime(["2025-03-06"] * 4 + ["2025-03-02", "2025-03-20"]),
            "label": [1, 0, 1, 0, 1, 0],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    marked = arms_from_memberships(treatment, rows)
    # a: holdout on 03-05 (latest) at 03-06, targeted on 03-01 at 03-02; b: its 03-01 placement
    # (the 03-05 row is an exit); c: no arm; d: never placed; b at 03-20: outside the window.
    assert marked["treated"].to_dict() == {10: 0, 11: 0, 14: 1}
    assert marked.loc[10, "label"] == 1


def test_arms_from_a_destinations_holdout_are_read_from_its_record(tmp_path):
    _memberships(tmp_path, "2025-03-01", [("a", "realized", None), ("b", "realized", None)])
    recorded = tmp_path / "as_of=2025-03-01" / "holdout_destination=crm"
    recorded.mkdir()
    pd.DataFrame(
        {"profile_id": ["a", "b"], "segment": "yoga", "status": "realized", "arm": ["holdout", "targeted"]}
    ).assign(as_of=dt.date(2025, 3, 1)).to_parquet(recorded / "arms.parquet", index=False)
    rows = pd.DataFrame(
        {"profile_id": ["a", "b"], "as_of": pd.to_datetime(["2025-03-02"] * 2), "label": [1, 0]}
    )
    treatment = TreatmentConfig(segment="yoga", memberships_dir=str(tmp_path), destination="crm")
    assert arms_from_memberships(treatment, rows)["treated"].to_list() == [0, 1]
    with pytest.raises(UserError, match=r"holdout_destination=sms/arms\.parquet"):
        arms_from_memberships(treatment.model_copy(update={"destination": "sms"}), rows)
    with pytest.raises(ValueError, match="a treatment `destination` names whose arms"):
        TreatmentConfig(event_type="email_open", destination="crm")


def test_arms_from_memberships_without_arms_is_a_clear_error(tmp_path):
    folder = tmp_path / "as_of=2025-03-01"
    folder.mkdir()
    pd.DataFrame({"profile_id": ["a"], "segment": ["yoga"], "status": ["realized"]}).to_parquet(
        folder / "memberships.parquet"
    )
    treatment = TreatmentConfig(segment="yoga", memberships_dir=str(tmp_path))
    rows = pd.DataFrame({"profile_id": ["a"], "as_of": pd.to_datetime(["2025-03-02"]), "label": [1]})
    with pytest.raises(UserError, match="record no `arm`; give the segment or its destination a holdout"):
        arms_from_memberships(treatment, rows)
    with pytest.raises(UserError, match="no memberships under"):
        arms_from_memberships(TreatmentConfig(segment="yoga", memberships_dir=str(tmp_path / "x")), rows)
