"""The population's recent outcome rate: point in time, a hand count, a feature both the
stacked build and single snapshots compute, and a model that trains and scores with it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import OutcomeConfig, ProjectConfig
from propensity.features.build.outcome_rate import (
    NAME,
    outcome_rate_feature,
    outcome_rate_sql,
    outcome_rates,
)
from propensity.models import tracking as mlflow_tracking
from propensity.pipeline.jobs import features as feature_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import train as model_jobs
from propensity.pipeline.jobs.config_files import load_model_config
from tests.purchase_data import write_purchase_only

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the purchase-only
# project) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("outcome_rate")

AS_OF = dt.date(2024, 1, 21)
HORIZON = 10  # the window at AS_OF is [2024-01-11, 2024-01-21)


def _events(rows: list[tuple[str, str, str, str | None]]) -> duckdb.DuckDBPyConnection:
    frame = pd.DataFrame(rows, columns=["profile_id", "timestamp", "event_type", "product_category"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["revenue"] = np.where(frame["event_type"] == "purchase", 10.0, np.nan)
    frame["order_revenue"] = frame["revenue"]
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute("CREATE TABLE events AS SELECT * FROM frame")
    return con


HAND = [
    ("p1", "2024-01-01 09:00", "page_view", None),
    ("p1", "2024-01-20 23:59", "purchase", "yoga"),  # the day before AS_OF: counts
    ("p2", "2024-01-02 09:00", "page_view", None),
    ("p2", "2024-01-21 00:00", "purchase", "yoga"),  # at AS_OF: a label's event, not the rate's
    ("p3", "2024-01-03 09:00", "page_view", None),
    ("p3", "2024-01-10 23:00", "purchase", "yoga"),  # before the window
    ("p4", "2024-01-15 09:00", "page_view", None),  # first seen inside the window: not counted
    ("p4", "2024-01-16 09:00", "purchase", "yoga"),
    ("p5", "2024-01-05 09:00", "page_view", None),
    ("p5", "2024-01-12 10:00", "purchase", "running"),
    ("p5", "2024-01-13 10:00", "purchase", "running"),  # two purchases, one profile
    ("p6", "2024-01-11 00:00", "page_view", None),  # first seen at the window's start
    ("p7", "2024-01-04 09:00", "page_view", None),  # never buys
]


def _rates(con, outcome: OutcomeConfig, dates: list[dt.date]) -> dict[dt.date, float | None]:
    return outcome_rates(con.execute(outcome_rate_sql(outcome, dates)).fetchall(), outcome.occurs)


def test_the_rate_is_a_hand_count_of_events_strictly_before_as_of():
    con = _events(HAND)
    purchase = OutcomeConfig(event_type="purchase", horizon_days=HORIZON)
    later, before_data = AS_OF + dt.timedelta(days=1), dt.date(2023, 12, 1)
    rates = _rates(con, purchase, [AS_OF, later, before_data])
    # Seen before 01-11: p1, p2, p3, p5, p7; of them p1 and p5 bought in [01-11, 01-21).
    assert rates[AS_OF] == pytest.approx(2 / 5)
    # A day later p2's purchase at 01-21 00:00 counts, and p6 (seen 01-11) is in the population.
    assert rates[later] == pytest.approx(3 / 6)
    assert rates[before_data] is None
    churn = OutcomeConfig(event_type="purchase", horizon_days=HORIZON, occurs=False)
    assert _rates(con, churn, [AS_OF])[AS_OF] == pytest.approx(3 / 5)
    yoga = OutcomeConfig(event_type="purchase", category="yoga", horizon_days=HORIZON)
    assert _rates(con, yoga, [AS_OF])[AS_OF] == pytest.approx(1 / 5)
    # Moving p1's purchase to AS_OF itself takes it out of the rate at AS_OF.
    moved = [
        r
        if r[:3] != ("p1", "2024-01-20 23:59", "purchase")
        else ("p1", "2024-01-21 00:00", "purchase", "yoga")
        for r in HAND
    ]
    assert _rates(_events(moved), purchase, [AS_OF])[AS_OF] == pytest.approx(1 / 5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 40 * 24 - 1), st.booleans()), min_size=1, max_size=40
    ),
    st.integers(1, 15),
    st.lists(st.integers(0, 45), min_size=1, max_size=4),
)
def test_the_rate_equals_a_count_in_pandas(events, horizon, offsets):
    start = dt.datetime(2024, 3, 1)
    rows = [
        (f"p{p}", str(start + dt.timedelta(hours=h)), "purchase" if bought else "page_view", None)
        for p, h, bought in events
    ]
    frame = pd.DataFrame(rows, columns=["profile_id", "timestamp", "event_type", "c"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    dates = [start.date() + dt.timedelta(days=o) for o in offsets]
    outcome = OutcomeConfig(event_type="purchase", horizon_days=horizon)
    got = _rates(_events(rows), outcome, dates)
    first = frame.groupby("profile_id")["timestamp"].min()
    for d in dates:
        end = pd.Timestamp(d)
        begin = end - pd.Timedelta(days=horizon)
        seen = set(first[first < begin].index)
        window = frame[(frame["timestamp"] >= begin) & (frame["timestamp"] < end)]
        hits = set(window.loc[window["event_type"] == "purchase", "profile_id"]) & seen
        assert got[d] == (pytest.approx(len(hits) / len(seen)) if seen else None)


def test_the_feature_reads_the_rate_of_each_snapshot_date_and_null_elsewhere():
    outcome = OutcomeConfig(event_type="purchase", horizon_days=30)
    other = dt.date(2024, 2, 1)
    feature = outcome_rate_feature({AS_OF: 0.25, other: 0.125, dt.date(2023, 1, 1): None}, outcome)
    assert feature.name == NAME and feature.family == "population_rate" and feature.aggregates == ()
    assert feature.label == "Share of earlier-seen profiles who had a purchase in the 30 days before"
    days = ", ".join(f"({(d - dt.date(1970, 1, 1)).days})" for d in (AS_OF, other, dt.date(2023, 1, 1)))
    got = duckdb.sql(f"SELECT {feature.sql} FROM (VALUES {days}) AS t(as_of_day)").fetchall()
    assert [r[0] for r in got] == [0.25, 0.125, None]


@pytest.fixture(scope="module")
def rate_project(tmp_path_factory):
    """Purchase-only data and a repeat-purchase model that asks for the outcome rate."""
    root = tmp_path_factory.mktemp("outcome_rate")
    write_purchase_only(root / "raw", customers=2000, days=730, seed=5)
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig())
    models = root / "models"
    models.mkdir()
    text = (Path(ProjectConfig().models_dir) / "repeat_purchase.yaml").read_text()
    # LightGBM's defaults (tuning.trials 1, not 12): the rate feature is the point, not the search.
    text = text.replace("  seed: 42\n", "  seed: 42\n  tuning: {trials: 1}\n")
    (models / "repeat_purchase.yaml").write_text(text + "features: {population_outcome_rate: true}\n")
    config = ProjectConfig.model_validate({"models_dir": str(models), "work_dir": str(root / "work")})
    assert load_model_config("repeat_purchase", config).training.tuning.trials == 1
    return root, config


def test_a_model_trains_and_scores_with_the_rate_of_its_dates(rate_project, tracking, tmp_path):
    root, config = rate_project
    result = model_jobs.train_model("repeat_purchase", root / "ingested", config)
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(config), "repeat_purchase", version=result.version
    )
    assert NAME in model.feature_names
    assert NAME in model.metadata["as_of_features"]  # monitor does not watch it
    assert NAME in set(result.importance["feature"])
    label = result.importance.set_index("feature").loc[NAME, "label"]
    assert label == "Share of earlier-seen profiles who had a purchase in the 90 days before"

    as_of = result.snapshots[-1]
    prep = score_jobs.prepare("repeat_purchase", root / "ingested", config, as_of, None, result.version)
    model_cfg = load_model_config("repeat_purchase", config)
    frame = prep.loaded.frame(prep.loaded.population_snapshot(prep.fs, model_cfg, as_of, as_of)[0])
    outcome = model_cfg.outcome
    expected = outcome_rates(prep.loaded.rows(outcome_rate_sql(outcome, [as_of])))[as_of]
    assert 0 < expected < 1
    np.testing.assert_allclose(frame[NAME].to_numpy(dtype=float), expected)
    run = score_jobs.score_model(
        "repeat_purchase", root / "ingested", config, as_of, tmp_path / "scores", version=result.version
    )
    assert run.eligible == len(frame) and run.scored == len(frame)
    # `features --model` writes the column the model reads, with its label.
    table = feature_jobs.build_features(
        root / "ingested", tmp_path / "f.parquet", config, as_of, "repeat_purchase"
    )
    written = pd.read_parquet(table.out)
    np.testing.assert_allclose(written[NAME].to_numpy(dtype=float), expected)
    assert feature_jobs.read_feature_metadata(table.out)["labels"][NAME] == label
