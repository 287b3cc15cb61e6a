"""Monitoring: PSI known answers and invariants, missing and out-of-range shares, the alert
through the CLI (exit 1) with an MLflow run."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from propensity.core.config import MonitorConfig, ProjectConfig
from propensity.features.build import population_rule
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import relation_columns
from propensity.models import monitoring as mon
from propensity.models import tracking as mlflow_tracking
from propensity.models.calibration import Calibrator
from propensity.models.estimator import PropensityModel
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import feature_set
from tests.conftest import invoke

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the monitored
# model) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("monitoring")

EPS = 1e-4
REFERENCE_AS_OF, LATER = dt.date(2025, 6, 1), dt.date(2025, 8, 1)
FEATURES = [
    "days_since_last_event",
    "event_count_30d",
    "page_view_count_30d",
    "purchase_count_365d",
    "loyalty_tier",
]


# -- PSI ---------------------------------------------------------------------------------------


def test_psi_matches_a_hand_computed_value():
    reference = np.arange(1, 11, dtype=float)  # median cut point 5.5: shares 0.5 / 0.5 / no missing
    current = np.array([1, 1, 1, 1, 1, 1, 1, 1, 9, np.nan])  # shares 0.8 / 0.1 / missing 0.1
    expected = (
        (0.8 - 0.5) * math.log(0.8 / 0.5)
        + (0.1 - 0.5) * math.log(0.1 / 0.5)
        + (0.1 - EPS) * math.log(0.1 / EPS)
    )
    assert mon.quantile_edges(reference, 2).tolist() == [5.5]
    assert mon.psi(reference, current, bins=2, epsilon=EPS) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.4749, abs=1e-4)


def test_categorical_psi_matches_a_hand_computed_value():
    categories = ["a", "b"]
    reference = mon.categorical_shares(pd.Series(["a", "a", "b", "b"]), categories)
    current = mon.categorical_shares(pd.Series(["a", "a", "a", "c"]), categories)  # c: never seen
    assert reference.tolist() == [0.5, 0.5, 0.0, 0.0] and current.tolist() == [0.75, 0.0, 0.25, 0.0]
    expected = (
        (0.25 * math.log(1.5)) + (EPS - 0.5) * math.log(EPS / 0.5) + (0.25 - EPS) * math.log(0.25 / EPS)
    )
    assert mon.psi_from_shares(reference, current, EPS) == pytest.approx(expected, rel=1e-12)


def test_bins_come_from_the_reference_and_repeated_cut_points_merge():
    mostly_zero = np.array([0] * 80 + [1] * 10 + [5] * 10, dtype=float)
    edges = mon.quantile_edges(mostly_zero, 10)  # deciles 1-7 are all 0; 0.8 -> 0.2, 0.9 -> 1.4
    assert edges == pytest.approx([0.0, 0.2, 1.4])
    shares = mon.numeric_shares(np.array([0, 0, 1, 2, 7, np.nan]), edges)
    assert shares * 6 == pytest.approx([2, 0, 1, 2, 1])  # (-inf,0] (0,.2] (.2,1.4] (1.4,inf) missing


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.lists(
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan"))), min_size=1, max_size=60
    ),
    st.integers(2, 20),
)
def test_psi_is_never_negative_and_zero_for_the_same_sample(reference, current, bins):
    reference, current = np.array(reference), np.array(current)
    assert mon.psi(reference, current, bins) >= 0
    assert mon.psi(reference, reference, bins) == 0
    assert mon.psi(current, current, bins) == 0


# -- a small real model, registered in MLflow --------------------------------------------------


def write_scores(root: Path, as_of: dt.date, frame: pd.DataFrame, probability: np.ndarray) -> None:
    directory = root / "model=drifty" / f"as_of={as_of}"
    directory.mkdir(parents=True, exist_ok=True)
    score = np.rint(probability * 100).astype(int)
    pd.DataFrame(
        {
            "profile_id": frame["profile_id"],
            "model": "drifty",
            "model_version": "1",
            "as_of": as_of,
            "probability": probability,
            "score": score,
            "percentile": np.clip(score, 1, 100),
            "bucket": np.where(score >= 70, "high", np.where(score >= 40, "medium", "low")),
        }
    ).to_parquet(directory / "part-0.parquet")


@pytest.fixture(scope="module")
def monitored(luma_small, tmp_path_factory, tracking):
    """A small LightGBM model on real Luma features, registered as `drifty` v1, with score
    partitions at its test snapshot (no drift) and later with every probability pushed up."""
    root = tmp_path_factory.mktemp("monitoring")
    config = ProjectConfig()
    ingested = root / "ingested"
    ingest_jobs.ingest(luma_small, ingested, config, on_bad_rows="quarantine")
    model_yaml = root / "drifty.yaml"
    model_yaml.write_text("name: drifty\npopulation: 'days_since_last_event <= 120'\n")
    model_cfg = load_model_config(str(model_yaml), config)
    loaded = event_jobs.load_events(ingested, config)
    con = loaded.con
    fs = feature_set(loaded, config, before=REFERENCE_AS_OF)
    where = population_rule(model_cfg, fs).sql("duckdb", column_prefix="f")

    def snapshot(as_of: dt.date) -> pd.DataFrame:
        # Profiles as of the date, as the score job builds them.
        sources = loaded.sources(as_of)
        sql = snapshot_sql(
            fs,
            as_of,
            relation_columns(con, sources.profiles),
            events=sources.events,
            profiles=sources.profiles,
            where=where,
        )
        return con.execute(sql).df()

    frames = {d: snapshot(d) for d in (REFERENCE_AS_OF, LATER)}
    train = frames[REFERENCE_AS_OF]
    rng = np.random.default_rng(0)
    y = (
        (train["event_count_30d"] > train["event_count_30d"].median()) ^ (rng.random(len(train)) < 0.2)
    ).astype(int)
    model = PropensityModel(
        name="drifty",
        feature_names=FEATURES,
        feature_labels={f: f.replace("_", " ") for f in FEATURES},
        categories={"loyalty_tier": sorted(train["loyalty_tier"].dropna().unique().tolist())},
        booster_text="",
        calibrator=Calibrator("sigmoid"),
        metadata={"test_as_of": str(REFERENCE_AS_OF), "categories": fs.categories},
    )
    params = {"objective": "binary", "num_leaves": 7, "min_child_samples": 20, "verbosity": -1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(model.matrix(train), label=y), num_boost_round=15)
    model.booster_text = booster.model_to_string()
    model.calibrator.fit(model.raw_score(train), y)
    mlflow_tracking.configure(config)
    # Artifacts under the test's directory, not ./mlruns (a sqlite store's default).
    mlflow.create_experiment("drifty", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment("drifty")
    with mlflow.start_run(run_name="train drifty"):
        _, version = mlflow_tracking.log_model(model, train, "drifty")
    assert version == "1"
    scores = root / "scores"
    write_scores(scores, REFERENCE_AS_OF, train, model.predict_proba(train))
    later = frames[LATER]
    write_scores(scores, LATER, later, np.clip(model.predict_proba(later) + 0.5, 0, 0.999))
    return {
        "root": root,
        "ingested": ingested,
        "scores": scores,
        "yaml": model_yaml,
        "model": model,
        "train": train,
    }


def monitor_cli(runner, monitored: dict, as_of: dt.date, *extra: str):
    return invoke(
        runner,
        "monitor",
        str(monitored["yaml"]),
        "--as-of",
        str(as_of),
        "--events",
        str(monitored["ingested"]),
        "--scores",
        str(monitored["scores"]),
        *extra,
    )


def test_no_drift_against_the_test_snapshot_itself_exits_0(monitored, runner, tracking, tmp_path):
    out = tmp_path / "report"
    result = monitor_cli(runner, monitored, REFERENCE_AS_OF, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "drift_report.json").read_text())
    assert report["alert"] is False and report["drifted"] == []
    assert report["score"]["psi"] == pytest.approx(0, abs=1e-9)
    assert {f["name"] for f in report["features"]} == set(FEATURES)
    assert all(f["psi"] == pytest.approx(0, abs=1e-9) for f in report["features"])
    assert (out / "score_distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drift_alert_exits_1_and_is_logged_to_mlflow(monitored, runner, tracking, tmp_path):
    out = tmp_path / "report"
    result = monitor_cli(runner, monitored, LATER, "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "alert:" in result.output
    report = json.loads((out / "drift_report.json").read_text())
    assert report["alert"] is True and "probability" in report["drifted"]
    assert report["score"]["psi"] > 1
    assert report["reference_as_of"] == "2025-06-01" and report["version"] == "1"
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("drifty")
    runs = client.search_runs([experiment.experiment_id], "tags.step = 'monitor' and tags.alert = 'true'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["psi_score"] == pytest.approx(report["score"]["psi"])
    assert run.data.metrics["alert"] == 1.0
    assert run.data.tags["monitored_version"] == "1" and run.data.tags["as_of"] == "2025-08-01"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "monitoring")}
    assert artifacts == {"monitoring/drift_report.json", "monitoring/score_distributions.png"}


def test_a_moved_base_rate_is_flagged_and_an_unchanged_one_is_not():
    reference = np.r_[np.ones(100), np.zeros(900)]  # 10 %
    moved = mon.base_rate_shift("2025-07-01", np.r_[np.ones(150), np.zeros(850)], "2025-06-01", reference)
    assert moved.moved and moved.difference_low > 0 and moved.rate == pytest.approx(0.15)
    same = mon.base_rate_shift("2025-07-01", np.r_[np.ones(105), np.zeros(895)], "2025-06-01", reference)
    assert not same.moved and same.difference_low < 0 < same.difference_high
    fell = mon.base_rate_shift("2025-07-01", np.r_[np.ones(60), np.zeros(940)], "2025-06-01", reference)
    assert fell.moved and fell.difference_high < 0
    assert moved.rate_low < 0.15 < moved.rate_high and (moved.positives, moved.rows) == (150, 1000)

    def report(base_rate):
        zero = mon.Drift("probability", "p", 0.0, 10, 0.0, 0.0, 0.0)
        return mon.MonitorReport("m", "1", "2025-08-01", "2025-06-01", 1000, 1000, 0.2, zero, [], base_rate)

    assert report(moved).alert and report(moved).drifted == ["base_rate"]
    assert report(moved).to_dict()["base_rate"]["moved"] is True
    assert not report(same).alert and report(same).to_dict()["base_rate"]["moved"] is False
    assert not report(None).alert and report(None).to_dict()["base_rate"] is None


def test_monitor_compares_the_latest_labelled_base_rate_with_the_test_snapshot(
    monitored, runner, tracking, tmp_path
):
    """At the test snapshot nothing newer is labelled; 61 days later the snapshot 30 days before
    (its horizon ended) is compared with the test snapshot's, both rebuilt from the events."""
    out = tmp_path / "report"
    monitor_cli(runner, monitored, REFERENCE_AS_OF, "--out", str(out))
    assert json.loads((out / "drift_report.json").read_text())["base_rate"] is None
    result = monitor_cli(runner, monitored, LATER, "--out", str(out), "--json")
    rate = json.loads(result.stdout)["report"]["base_rate"]
    config = ProjectConfig()
    model_cfg = load_model_config(str(monitored["yaml"]), config)
    loaded = event_jobs.load_events(monitored["ingested"], config)
    fs = feature_set(loaded, config, before=REFERENCE_AS_OF)
    labelled = LATER - dt.timedelta(days=model_cfg.outcome.horizon_days)
    assert rate["labelled_as_of"] == str(labelled) and rate["reference_as_of"] == str(REFERENCE_AS_OF)
    for day, prefix in ((labelled, ""), (REFERENCE_AS_OF, "reference_")):
        relation, is_labelled = loaded.population_snapshot(fs, model_cfg, day, LATER)
        labels = loaded.frame(relation)["label"]
        assert is_labelled and rate[f"{prefix}rows"] == len(labels) > 100
        assert rate[f"{prefix}positives"] == labels.sum() and rate[f"{prefix}rate"] == pytest.approx(
            labels.mean()
        )
    moved = rate["difference_low"] > 0 or rate["difference_high"] < 0
    assert rate["moved"] is moved
    assert ("base_rate" in json.loads(result.stdout)["report"]["drifted"]) is moved


def test_drift_alert_under_json_is_one_object_and_still_exits_1(monitored, runner, tracking, tmp_path):
    out = tmp_path / "report"
    result = monitor_cli(runner, monitored, LATER, "--out", str(out), "--json")
    assert result.exit_code == 1
    printed = json.loads(result.stdout)  # one object, nothing else on stdout
    report = json.loads((out / "drift_report.json").read_text())
    assert printed["alert"] is True and printed["report"]["drifted"] == report["drifted"]
    assert printed["report"]["score"]["psi"] == pytest.approx(report["score"]["psi"], rel=1e-12)
    assert printed["report_path"] == str(out / "drift_report.json") and printed["version"] == "1"
    assert MlflowClient(tracking_uri=tracking).get_run(printed["run_id"]).data.metrics["alert"] == 1.0


def test_missing_and_out_of_range_shares_per_feature(monitored):
    model, reference = monitored["model"], monitored["train"].copy()
    reference["probability"] = model.predict_proba(reference)
    current = reference.copy()
    n = len(current)
    current.loc[current.index[: n // 4], "event_count_30d"] = np.nan
    high = reference["days_since_last_event"].max()
    current.loc[current.index[n // 2 :], "days_since_last_event"] = high + 1
    current["loyalty_tier"] = "platinum"  # a tier the reference never had
    report = mon.monitor(model, reference, current, MonitorConfig(), str(LATER), str(REFERENCE_AS_OF))
    drift = {d.name: d for d in report.features}
    assert drift["event_count_30d"].current_missing == pytest.approx((n // 4) / n)
    assert drift["event_count_30d"].reference_missing == pytest.approx(
        reference["event_count_30d"].isna().mean()
    )
    assert drift["days_since_last_event"].out_of_range == pytest.approx((n - n // 2) / n)
    assert drift["loyalty_tier"].out_of_range is None
    assert drift["loyalty_tier"].psi > 1
    assert report.alert and "loyalty_tier" in report.drifted
    assert drift["purchase_count_365d"].psi == 0
    gains = [d.importance for d in report.features]
    assert gains == sorted(gains, reverse=True)


def test_missing_score_partition_is_a_user_error(monitored, runner, tracking):
    result = monitor_cli(runner, monitored, dt.date(2025, 7, 1))
    assert result.exit_code == 2
    assert "model 'drifty' has no scores at 2025-07-01" in result.output
