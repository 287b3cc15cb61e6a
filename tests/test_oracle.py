"""The oracle: the outcome's probability given the simulation's full state, by Monte-Carlo continuation."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from propensity.core.config import ModelConfig, OutcomeConfig, ProjectConfig, TrainingConfig
from propensity.features.build.event_queries import data_end
from propensity.features.build.model_frames import labelled_sql
from propensity.features.build.selection import model_features
from propensity.features.build.snapshots import snapshot_dates
from propensity.features.synthetic.oracle import no_counted_purchase_probability, oracle_probabilities
from propensity.features.synthetic.simulator import replay, simulate
from propensity.features.synthetic.world import CATEGORIES, OFFLINE, GeneratorSettings
from propensity.features.synthetic.writer import generate
from propensity.models import evaluate as ev
from propensity.models.holdout_figures import holdout_figures
from propensity.models.split import split
from propensity.models.train import fit_candidates
from propensity.pipeline.jobs import events as event_jobs

# Two-sided 99 % normal quantile: each check is one of several in this file.
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs.train import baseline_scores

# Two-sided 99 % normal quantile: each check is one of several in this file.
Z99 = 2.576


def _within_binomial_interval(predicted: np.ndarray, realised: np.ndarray) -> tuple[bool, str]:
    """Is the realised rate within the 99 % interval of the oracle's expected rate?"""
    mean, rate = predicted.mean(), realised.mean()
    se = np.sqrt((predicted * (1 - predicted)).sum()) / len(predicted)
    return abs(mean - rate) <= Z99 * se, f"oracle {mean:.4f} vs realised {rate:.4f} (se {se:.4f})"


@pytest.fixture(scope="module")
def realistic_year():
    settings = GeneratorSettings(profiles=8000, days=300, seed=21)
    return settings, simulate(settings)


@pytest.mark.parametrize(
    ("category", "occurs"),
    [(None, True), ("yoga", True), (None, False)],
    ids=["purchase", "yoga", "no-purchase"],
)
def test_oracle_matches_the_realised_rate_of_every_person(realistic_year, category, occurs):
    settings, full = realistic_year
    day, horizon = 200, 30 if occurs else 60
    category_index = None if category is None else list(CATEGORIES).index(category)
    replayed = replay(settings, [day])
    people = np.arange(settings.profiles)
    none = no_counted_purchase_probability(
        replayed, day, people, horizon, category_index, 32, np.random.default_rng(0)
    )
    bought = full.purchases
    counted = (bought["day"] >= day) & (bought["day"] < day + horizon) & (bought["channel"] != OFFLINE)
    if category_index is not None:
        counted &= bought["category"] == category_index
    happened = np.zeros(settings.profiles, bool)
    happened[bought["person"][counted]] = True
    predicted, realised = (1 - none, happened) if occurs else (none, ~happened)
    ok, message = _within_binomial_interval(predicted, realised)
    assert ok, message
    # Within groups the oracle must know apart too: customers vs the rest.
    customers = full.traits.customer
    ok, message = _within_binomial_interval(predicted[customers], realised[customers])
    assert ok, f"customers: {message}"


def test_replay_repeats_the_run(realistic_year):
    settings, full = realistic_year
    replayed = replay(settings, [120, 250])
    assert replayed.days_run == 250 and set(replayed.states) == {120, 250}
    before = full.purchases["day"] < 250
    for key in ("day", "person", "channel", "category"):
        np.testing.assert_array_equal(replayed.purchases[key], full.purchases[key][before])
    # The state at a day's start is the same whichever later days are also asked for.
    again = replay(settings, [120])
    np.testing.assert_array_equal(again.states[120].interest, replayed.states[120].interest)


def test_the_easy_world_has_a_true_oracle_too():
    settings = GeneratorSettings(profiles=6000, days=200, seed=4, difficulty="easy")
    full = simulate(settings)
    day = 120
    none = no_counted_purchase_probability(
        replay(settings, [day]), day, np.arange(settings.profiles), 30, None, 32, np.random.default_rng(1)
    )
    bought = full.purchases
    happened = np.zeros(settings.profiles, bool)
    happened[bought["person"][(bought["day"] >= day) & (bought["day"] < day + 30)]] = True
    ok, message = _within_binomial_interval(1 - none, happened)
    assert ok, message


@pytest.fixture(scope="module")
def transactions(tmp_path_factory):
    """A purchase-only log (every profile is one customer), ingested."""
    root = tmp_path_factory.mktemp("transactions")
    generate(GeneratorSettings(profiles=4000, days=240, seed=8, scenario="purchase_only"), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    return event_jobs.load_events(root / "ingested", ProjectConfig())


@pytest.mark.parametrize(
    "outcome",
    [
        OutcomeConfig(horizon_days=90),
        OutcomeConfig(horizon_days=60, category="running"),
        OutcomeConfig(horizon_days=60, occurs=False),
    ],
    ids=["repeat-90d", "running", "no-purchase"],
)
def test_oracle_probabilities_on_a_transaction_log(transactions, outcome):
    con, as_of = transactions.con, dt.date(2025, 6, 1)
    # Customers seen before as_of, as a population rule would pick them (never by the future).
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW oracle_rows AS
        SELECT DISTINCT profile_id, DATE '{as_of}' AS as_of FROM events WHERE timestamp < TIMESTAMP '{as_of}'
    """)
    frame = con.execute(labelled_sql("SELECT * FROM oracle_rows", outcome)).df()
    oracle = oracle_probabilities(con, frame, outcome, transactions.inputs.ground_truth)
    assert oracle.index.equals(frame.index) and oracle.notna().all()
    ok, message = _within_binomial_interval(oracle.to_numpy(), frame["label"].to_numpy())
    assert ok, message
    assert ev.roc_auc_score(frame["label"], oracle) > 0.6


def test_oracle_covers_whole_people_and_judges_only_purchases(luma_small):
    loaded = event_jobs.load_events(luma_small, ProjectConfig())
    con = loaded.con
    frame = con.execute("""
        SELECT profile_id, DATE '2025-07-01' AS as_of FROM (SELECT DISTINCT profile_id FROM events)
        UNION ALL SELECT 'no-such-profile', DATE '2025-07-01'
        UNION ALL SELECT min(profile_id), DATE '2024-01-01' FROM events
    """).df()
    frame.index = frame.index + 1000  # any index: the result follows it
    oracle = oracle_probabilities(con, frame, OutcomeConfig(horizon_days=30), loaded.inputs.ground_truth)
    assert oracle.index.equals(frame.index) and oracle.dropna().between(0, 1).all()
    coverage = oracle.notna().mean()
    # Anonymous people split over devices, shared devices and kiosk accounts are not judged.
    assert 0.4 < coverage < 0.95
    assert np.isnan(oracle.iloc[-2]) and np.isnan(oracle.iloc[-1])
    # The kiosk/test accounts: the generator appends them as the last rows of profiles.csv
    # (found from the data, not from a crm_id that exists only for one fixture's size).
    accounts = pd.read_csv(luma_small / "profiles.csv")["crm_id"].tail(GeneratorSettings().test_accounts)
    listed = ", ".join(f"'{c}'" for c in accounts)
    test_accounts = con.execute(
        f"SELECT DISTINCT profile_id FROM identity_map WHERE value IN ({listed})"
    ).df()
    judged = frame["profile_id"].isin(test_accounts["profile_id"])
    assert len(accounts) > 0 and judged.any()  # never vacuous
    assert oracle[judged].isna().all()
    for outcome in (
        OutcomeConfig(event_type="store_visit"),
        OutcomeConfig(min_revenue=100.0),
        OutcomeConfig(above_average_order_value=True),
        OutcomeConfig(category="swimming"),
    ):
        assert oracle_probabilities(con, frame, outcome, loaded.inputs.ground_truth).isna().all()


def test_oracle_is_deterministic_and_its_auc_noise_is_small(luma_small):
    loaded = event_jobs.load_events(luma_small, ProjectConfig())
    con, outcome = loaded.con, OutcomeConfig(horizon_days=30)
    frame = con.execute(
        labelled_sql(
            "SELECT DISTINCT profile_id, DATE '2025-06-15' AS as_of FROM events "
            "WHERE timestamp < TIMESTAMP '2025-06-15'",
            outcome,
        )
    ).df()
    first = oracle_probabilities(con, frame, outcome, loaded.inputs.ground_truth)
    again = oracle_probabilities(con, frame, outcome, loaded.inputs.ground_truth)
    pd.testing.assert_series_equal(first, again)
    known = first.notna().to_numpy()
    y = frame["label"].to_numpy()[known]
    aucs = [
        ev.roc_auc_score(
            y, oracle_probabilities(con, frame, outcome, loaded.inputs.ground_truth, seed=s)[known]
        )
        for s in range(1, 4)
    ]
    assert max(aucs) - min(aucs) < 0.01, aucs


@pytest.fixture(scope="module")
def realistic_ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("bound")
    generate(GeneratorSettings(profiles=6000, days=300, seed=13), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    return event_jobs.load_events(root / "ingested", ProjectConfig())


@pytest.mark.parametrize(
    ("population", "outcome"),
    [
        ("purchase_count_365d >= 1", OutcomeConfig(horizon_days=30, category="yoga")),
        ("purchase_count_365d >= 1", OutcomeConfig(horizon_days=60, occurs=False)),
    ],
    ids=["upsell", "churn"],
)
def test_a_fitted_model_does_not_beat_the_oracle(realistic_ingested, population, outcome):
    beats = outcome.category is not None  # upsell beats every baseline beyond the interval
    config = ProjectConfig()
    model_cfg = ModelConfig(
        name="bound",
        population=population,
        outcome=outcome,
        training=TrainingConfig(
            min_positives=30, min_negatives=30, snapshots={"count": 5, "spacing_days": 28}
        ),
    )
    con = realistic_ingested.con
    cutoff = data_end(con)
    first = snapshot_dates(cutoff, outcome.horizon_days, 5, 28)[0]
    fs = event_jobs.feature_set(realistic_ingested, config, before=first)
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    names = list(labels)
    # Labels by each event's own profile (no identity graph), as this bound was set.
    frame = dataclasses.replace(realistic_ingested, graph=None).training_rows(fs, model_cfg, cutoff).frame
    parts = split(frame, model_cfg.training)
    monotone = fs.monotone(outcome.occurs)
    trained = fit_candidates(parts, names, labels, model_cfg.training, model_cfg.name, monotone, outcome)
    model, test = trained.model, parts.test
    oracle = oracle_probabilities(con, test, outcome, realistic_ingested.inputs.ground_truth).to_numpy()
    known = ~np.isnan(oracle)
    y, p, o = test["label"].to_numpy()[known], model.predict_proba(test)[known], oracle[known]
    assert known.mean() > 0.5 and y.sum() > 20
    rng = np.random.default_rng(0)
    differences = []
    for _ in range(200):
        rows = rng.integers(0, len(y), len(y))
        if 0 < y[rows].sum() < len(rows):
            differences.append(ev.roc_auc_score(y[rows], p[rows]) - ev.roc_auc_score(y[rows], o[rows]))
    # The model may tie the oracle by chance, never beat it beyond the paired bootstrap interval.
    low, high = np.quantile(differences, [0.025, 0.975])
    assert low <= 0.0, f"model AUC - oracle AUC in [{low:.3f}, {high:.3f}]"
    # ... and it is a model worth shipping: at least 0.80 of the oracle's AUC (a diagnostic floor,
    # not a target), and better than every baseline beyond the paired interval, on the same rows.
    ratio = ev.roc_auc_score(y, p) / ev.roc_auc_score(y, o)
    assert ratio >= 0.80, f"{trained.reason}: AUC {ratio:.3f} of the oracle's"
    figures = holdout_figures(
        test["label"].to_numpy(), model.predict_proba(test), baseline_scores(parts, test, model_cfg), 1000, 0
    )
    for name in ("logreg", "recency"):
        low = figures[f"test_auc_minus_baseline_{name}_ci_low"]
        high = figures[f"test_auc_minus_baseline_{name}_ci_high"]
        said = f"{trained.reason}: AUC minus {name} in [{low:.4f}, {high:.4f}]"
        # Churn on 6,000 profiles: the blend (mostly BG/NBD) ties logistic RFM, AUC minus logreg
        # in [-0.015, +0.014]; measured, not assumed: there it must be no worse beyond the interval.
        assert low > 0 if beats or name == "recency" else high > 0, said
