"""Sampled training: labels first, features for the chosen rows only, weighted to stay unbiased."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from propensity.core.config import ProjectConfig
from propensity.core.sampling import WEIGHT, profile_fraction
from propensity.features.build.training_sample import RowChoice, partitions
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import train as model_jobs
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import feature_set, load_events
from propensity.pipeline.jobs.plan import make_plan

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the generated
# world and its ingest) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("training_sample")

KEY = ["profile_id", "as_of"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    generate(GeneratorSettings(profiles=4000, days=300, seed=5), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    return root / "ingested"


def _choice(plan, rows: int, partition_rows: int, seed: int = 42) -> RowChoice:
    return RowChoice(
        test=plan.test,
        validation=plan.validation,
        seed=seed,
        test_fraction=0.3,
        validation_share=0.3,
        rows=rows,
        min_rate=0.02,
        partition_rows=partition_rows,
    )


@pytest.fixture(scope="module")
def frames(ingested):
    """(full frame, sampled frame, its record, the choice, the second sampled frame)."""
    config = ProjectConfig()
    loaded = load_events(ingested, config)
    model = load_model_config("upsell", config)
    cutoff = loaded.span()[1]
    plan = make_plan(model, loaded, cutoff)
    model = plan.planned(model)
    fs = feature_set(loaded, config, before=plan.dates[0])
    full = loaded.training_rows(fs, model, cutoff)
    choice = _choice(plan, rows=len(full.frame) // 3, partition_rows=2000)
    sampled = loaded.training_rows(fs, model, cutoff, choice)
    again = loaded.training_rows(fs, model, cutoff, choice)
    return full.frame, sampled.frame, sampled.sampling, choice, again.frame


def _usable(frame: pd.DataFrame, choice: RowChoice) -> pd.DataFrame:
    """The rows the split reads: held-out profiles only at the test snapshot."""
    as_of = pd.to_datetime(frame["as_of"]).dt.date
    test = profile_fraction(frame["profile_id"], f"test-{choice.seed}") < choice.test_fraction
    return frame[(as_of == choice.test).to_numpy() == test]


def test_sampled_rows_are_the_full_frames_rows_with_the_same_features(frames):
    full, sampled, record, _, _ = frames
    assert 0 < len(sampled) < len(full) * 0.6
    assert record["sample_rate"] < 1
    merged = sampled.merge(full, on=KEY, how="left", suffixes=("", "_full"), indicator=True)
    assert (merged["_merge"] == "both").all()
    columns = [c for c in full.columns if c not in KEY]
    expected = merged[[f"{c}_full" for c in columns]].set_axis(columns, axis=1)
    pd.testing.assert_frame_equal(merged[columns], expected, check_dtype=False)


def test_every_positive_is_kept_and_the_weights_restore_the_rate(frames):
    full, sampled, record, choice, _ = frames
    usable = _usable(full, choice)
    positives = usable[usable["label"] == 1][KEY]
    kept = positives.merge(sampled[KEY], on=KEY)
    assert len(kept) == len(positives) > 100
    assert (sampled.loc[sampled["label"] == 1, WEIGHT] == 1).all()
    # Negatives: exactly those of the drawn profiles (and every one at the whole snapshots).
    drawn = profile_fraction(usable["profile_id"], f"sample-{choice.seed}") < record["sample_rate"]
    as_of = pd.to_datetime(usable["as_of"]).dt.date
    whole = (as_of == choice.test) | (
        (as_of == choice.validation)
        & (profile_fraction(usable["profile_id"], f"validation-{choice.seed}") < choice.validation_share)
    )
    negatives = usable[(usable["label"] == 0) & (drawn | whole.to_numpy())]
    assert len(sampled[sampled["label"] == 0]) == len(negatives)
    # The weighted positive rate of the sampled rows estimates the full rate: within 4 standard
    # errors of the profile draw (negatives weigh 1/rate, a profile's rows drawn together).
    rate = record["sample_rate"]
    weighted = np.average(sampled["label"], weights=sampled[WEIGHT])
    actual = usable["label"].mean()
    negative_rows = usable[(usable["label"] == 0) & ~whole.to_numpy()].groupby("profile_id").size()
    sd_negatives = np.sqrt(((1 - rate) / rate) * np.sum(negative_rows.to_numpy() ** 2))
    sd_rate = actual * sd_negatives / len(usable)
    assert abs(weighted - actual) < 4 * sd_rate
    assert abs(sampled["label"].mean() - actual) > 8 * sd_rate  # unweighted, the rate is biased


def test_the_same_data_and_choice_give_the_same_rows(frames):
    _, sampled, _, _, again = frames
    pd.testing.assert_frame_equal(sampled, again)


def test_partitions_keep_profiles_together_and_respect_the_row_setting(frames):
    _, _, record, choice, _ = frames
    assert record["sample_partitions"] >= -(-record["sample_candidate_rows"] // choice.partition_rows) >= 2
    rows = pd.DataFrame({"profile_id": np.repeat([f"p{i:03d}" for i in range(100)], 3), "as_of_day": 0})
    groups = partitions(rows, 40)
    assert len(groups) == -(-300 // 40)
    assert sorted(np.concatenate(groups)) == sorted(rows["profile_id"].unique())
    assert all(len(g) * 3 <= 40 + 2 for g in groups)


def test_a_sampled_train_runs_end_to_end_with_the_test_snapshot_whole(ingested, tracking, tmp_path):
    model = tmp_path / "upsell_sampled.yaml"
    model.write_text(
        "name: upsell_sampled\npopulation: 'purchase_count_365d >= 1'\n"
        "outcome: {event_type: purchase, category: yoga, horizon_days: 30}\n"
        "training: {snapshots: {count: 6, spacing_days: 21}, tuning: {trials: 1},"
        " validation_profile_fraction: 0.6, min_positives: 50, min_negatives: 50,"
        " sampling: {rows: 5000, partition_rows: 3000}}\n"
    )
    result = model_jobs.train_model(str(model), ingested, ProjectConfig())
    assert "sampled: features built for" in result.plan
    assert result.rows["test"]["rows"] > 0 and 0.5 < result.metrics["test_auc"] <= 1
    assert result.rows["train"]["rows"] < 5000


def test_weights_count_as_repeated_rows_in_the_weighted_fits():
    """A row of weight 2 fits as the same row twice: LightGBM (no bagging), the logistic
    regression and BG/NBD, so 1 / rate weights stand for the negatives left out."""
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression

    from propensity.models.bgnbd import fit_bgnbd

    rng = np.random.default_rng(3)
    n = 3000
    X = rng.integers(0, 8, size=(n, 3)).astype(float)  # few values: the same bins either way
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0] / 2 - 2.5)))).astype(int)
    w = np.where(y == 0, 2.0, 1.0)
    twice = np.concatenate([np.arange(n), np.flatnonzero(y == 0)])
    params = {"objective": "binary", "verbosity": -1, "deterministic": True, "num_threads": 1, "seed": 0}
    params |= {"min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 1e-3}  # leaf sizes counted in rows
    weighted = lgb.train(params, lgb.Dataset(X, y, weight=w), num_boost_round=20).predict(X)
    repeated = lgb.train(params, lgb.Dataset(X[twice], y[twice]), num_boost_round=20).predict(X)
    np.testing.assert_allclose(weighted, repeated, atol=1e-6)
    unweighted = lgb.train(params, lgb.Dataset(X, y), num_boost_round=20).predict(X)
    assert np.abs(weighted - unweighted).max() > 0.01
    fit = LogisticRegression(max_iter=2000).fit(X, y, sample_weight=w)
    again = LogisticRegression(max_iter=2000).fit(X[twice], y[twice])
    np.testing.assert_allclose(fit.coef_, again.coef_, atol=1e-4)
    from propensity.models.bgnbd import BgNbd
    from tests.test_model_parts import _simulate_bgnbd

    x, t_x, T = _simulate_bgnbd(BgNbd(r=0.8, alpha=40.0, a=0.9, b=3.0), n, seed=4)
    w = np.where(x == 0, 2.0, 1.0)
    twice = np.concatenate([np.arange(n), np.flatnonzero(x == 0)])
    by_weight = fit_bgnbd(x, t_x, T, w)
    by_rows = fit_bgnbd(x[twice], t_x[twice], T[twice])
    np.testing.assert_allclose(
        [by_weight.r, by_weight.alpha, by_weight.a, by_weight.b],
        [by_rows.r, by_rows.alpha, by_rows.a, by_rows.b],
        rtol=1e-3,
    )
    unweighted = fit_bgnbd(x, t_x, T)
    assert abs(unweighted.r - by_weight.r) > 0.01


def test_rows_are_sampled_only_beyond_the_budget_and_never_for_uplift():
    from propensity.core.config import ModelConfig
    from propensity.models.snapshot_plan import SnapshotPlan
    from propensity.pipeline.jobs.training_data import row_choice

    dates = [dt.date(2025, 1, 1) + dt.timedelta(days=21 * i) for i in range(6)]
    plan = SnapshotPlan(
        dates, dates[3], 30, 21, dt.date(2024, 1, 1), dates[-1] + dt.timedelta(days=30),
        estimated_rows=dict.fromkeys(dates, 300_000),
    )  # fmt: skip
    model = ModelConfig(name="m", training={"sampling": {"rows": 1_800_000}})
    assert row_choice(model, plan) is None  # 6 x 300,000 rows fit the budget
    bigger = ModelConfig(name="m", training={"sampling": {"rows": 1_799_999, "partition_rows": 5000}})
    choice = row_choice(bigger, plan)
    assert (choice.test, choice.validation, choice.rows, choice.partition_rows) == (
        dates[-1],
        dates[3],
        1_799_999,
        5000,
    )
    uplift = ModelConfig.model_validate({**bigger.model_dump(), "treatment": {"event_type": "email_open"}})
    assert row_choice(uplift, plan) is None


def test_the_plans_row_budget_counts_the_rows_sampled_training_builds(ingested):
    """On DuckDB the plan's row budget counts the rows the sample builds: a budget far below
    the dates' estimated rows keeps every date when sampling builds about that many, and the
    rows then chosen are about what the plan counted."""
    from propensity.pipeline.jobs.training_data import training_rows

    config = ProjectConfig()
    loaded = load_events(ingested, config)
    cutoff = loaded.span()[1]
    model = load_model_config("upsell", config)
    every = make_plan(model, loaded, cutoff)
    estimated = sum(every.estimated_rows[d] for d in every.dates)
    budget = estimated // 3
    training = model.training.model_dump()
    training["snapshots"]["max_rows"] = budget
    # Sampling rows above the estimate: every row is built, and the budget counts every row.
    unsampled = model.model_validate(
        {**model.model_dump(), "training": {**training, "sampling": {"rows": estimated}}}
    )
    assert len(make_plan(unsampled, loaded, cutoff).dates) < len(every.dates)
    sampled = model.model_validate(
        {**model.model_dump(), "training": {**training, "sampling": {"rows": budget, "min_rate": 0.02}}}
    )
    plan = make_plan(sampled, loaded, cutoff)
    assert plan.dates == every.dates and plan.notes == []
    sampled = plan.planned(sampled)
    fs = feature_set(loaded, config, before=plan.dates[0])
    rows, choice = training_rows(loaded, fs, sampled, cutoff, plan)
    assert choice is not None
    built = rows.sampling["sample_candidate_rows"]
    assert 0.8 * budget <= built <= 1.25 * budget, (built, budget)


def test_the_refit_thins_the_whole_negatives_as_the_sample_thinned_the_others():
    """The refit draws the whole rows' negatives by the sample's own hash and rate: positives
    and already sampled rows untouched, kept negatives weighted 1 / rate, the weighted count of
    negatives an unbiased estimate (within 4 standard deviations of the binomial draw)."""
    from propensity.models.refit import thin_whole_negatives

    rng = np.random.default_rng(8)
    n, rate, seed = 20_000, 0.25, 42
    ids = pd.Series([f"p{i:06d}" for i in range(n)])
    label = (rng.random(n) < 0.1).astype(int)
    whole = rng.random(n) < 0.5  # half the rows whole (weight 1), the others a drawn sample
    drawn = profile_fraction(ids, f"sample-{seed}") < rate
    weight = np.where(whole | (label == 1), 1.0, 1.0 / rate)
    frame = pd.DataFrame({"profile_id": ids, "label": label, WEIGHT: weight})
    frame = frame[whole | (label == 1) | drawn].reset_index(drop=True)
    thinned = thin_whole_negatives(frame, seed)
    assert thinned.equals(thin_whole_negatives(frame, seed))  # seeded: the same rows again
    kept = set(thinned["profile_id"])
    assert set(frame.loc[frame["label"] == 1, "profile_id"]) <= kept
    assert set(frame.loc[frame[WEIGHT] > 1, "profile_id"]) <= kept
    negatives = thinned[thinned["label"] == 0]
    assert (negatives[WEIGHT] == 1 / rate).all()  # no whole negative left unweighted
    assert (profile_fraction(negatives["profile_id"], f"sample-{seed}") < rate).all()
    whole_negatives = int(((frame["label"] == 0) & (frame[WEIGHT] == 1)).sum())
    assert len(thinned) < len(frame) - whole_negatives * 0.6
    # Every negative of the data before any sampling, estimated from the thinned rows alone.
    estimate, truth = negatives[WEIGHT].sum(), int((label == 0).sum())
    spread = np.sqrt(truth * (1 - rate) / rate)
    assert abs(estimate - truth) < 4 * spread
    unsampled = frame.drop(columns=WEIGHT)
    assert thin_whole_negatives(unsampled, seed) is unsampled
    flat = frame.assign(**{WEIGHT: 1.0})
    assert thin_whole_negatives(flat, seed) is flat


def test_profile_fraction_is_the_md5_prefix_of_salt_and_id_per_row():
    """The draws that split and sample profiles: md5's first 8 hex digits over 2^32, the same
    number for a repeated id, in the rows' order whatever the index."""
    import hashlib

    ids = pd.Series(["p_b", "p_a", "p_b", "p_c", "p_a"], index=[10, 3, 7, 1, 0])
    expected = [int(hashlib.md5(f"test-42:{p}".encode()).hexdigest()[:8], 16) / 2**32 for p in ids]
    assert profile_fraction(ids, "test-42").tolist() == expected
    assert profile_fraction(ids, "sample-42").tolist() != expected
