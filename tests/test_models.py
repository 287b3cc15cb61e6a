"""Models: training through the CLI, MLflow tracking and registry, determinism, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from propensity.core.config import ProjectConfig, TrainingConfig
from propensity.core.errors import UserError
from propensity.models import evaluate as ev
from propensity.models import tracking as mlflow_tracking
from propensity.models.calibration import Calibrator
from propensity.models.rates import rate_difference_interval, wilson_interval
from propensity.models.split import split
from propensity.models.train import DEFAULT_LIGHTGBM
from propensity.pipeline.jobs import features as feature_jobs
from propensity.pipeline.jobs import train as model_jobs
from tests.conftest import invoke

METRIC_KEYS = (
    "test_auc",
    "test_average_precision",
    "test_brier",
    "test_log_loss",
    "test_ece",
    "test_lift_at_10",
    "baseline_recency_auc",
    "baseline_logreg_auc",
    "oracle_auc",
    "auc_to_oracle",
    "auc_to_oracle_ci_low",
    "auc_to_oracle_ci_high",
    "test_auc_ci_low",
    "test_auc_ci_high",
    "test_brier_ci_low",
    "test_positives",
    "baseline_logreg_auc_ci_low",
    "valid_log_loss",
)


def test_train_logs_metrics_baselines_oracle_and_registers_challenger(churn_run, tracking):
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    run = client.get_run(churn_run.run_id)
    for key in METRIC_KEYS:
        assert key in run.data.metrics, key
    # The realistic world hides much of what drives purchases (cycles, lapsing, unrecorded
    # purchases): the model learns a good share of what the oracle knows, and never more.
    ratio_low, ratio_high = (run.data.metrics[f"auc_to_oracle_ci_{end}"] for end in ("low", "high"))
    assert ratio_low < run.data.metrics["auc_to_oracle"] < ratio_high
    # a good share of the oracle, and never above it: the interval's lower end stays below 1
    assert run.data.metrics["auc_to_oracle"] > 0.7 and ratio_low < 1.0
    # calibrated on held-out rows: the test snapshot's expected calibration error stays small
    # (0.042 measured for this seed and data)
    assert run.data.metrics["test_ece"] < 0.06
    assert run.data.metrics["test_auc"] > run.data.metrics["baseline_recency_auc"]
    assert run.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/gains.png",
        "plots/calibration.png",
        "plots/lift_by_decile.png",
        "plots/score_distribution.png",
        "plots/feature_importance.png",
    } <= artifacts
    features = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/features.json")["features"]
    assert {"name": "days_since_last_purchase", "label": "Days since the last purchase"} in features
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == churn_run.version
    assert (
        run.data.tags["model_family"] in ("lightgbm", "logistic", "blend")
        and run.data.tags["selection_reason"]
    )
    if run.data.tags["model_family"] == "lightgbm":
        # Trees stay shallow, tuned or not: explanations cost grows with depth squared.
        assert 0 < int(run.data.params["lightgbm_max_depth"]) <= 6


def test_logged_model_loads_in_a_fresh_process(churn_run, luma_ingested, tracking, tmp_path):
    features = feature_jobs.build_features(
        luma_ingested,
        tmp_path / "f.parquet",
        ProjectConfig(),
        as_of=pd.Timestamp("2025-10-01").date(),
        model="churn",
    )
    assert features.rows > 100
    script = textwrap.dedent(f"""
        import sys
        # Hide this repository (editable install, working directory): the model must bring
        # its own code through MLflow's code_paths.
        sys.meta_path = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
        repo = {str(__import__("pathlib").Path(__file__).resolve().parents[1])!r}
        sys.path = [p for p in sys.path if p not in ("", ".", repo)]
        try:
            import propensity.models
            raise SystemExit("the project is still importable; the test proves nothing")
        except ImportError:
            pass
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/churn@challenger")
        frame = pd.read_parquet({str(tmp_path / "f.parquet")!r})
        out = model.predict(frame)
        print(out["probability"].round(10).tolist()[:50])
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(ProjectConfig()), "churn", alias="challenger"
    )
    here = model.predict_proba(pd.read_parquet(tmp_path / "f.parquet")).round(10).tolist()[:50]
    assert fresh == pytest.approx(here) and all(0 < p < 1 for p in fresh)


def test_same_data_and_config_give_the_same_model(churn_run, luma_ingested, tracking):
    again = model_jobs.train_model("churn", luma_ingested, ProjectConfig())
    assert again.version != churn_run.version
    assert again.metrics == churn_run.metrics
    client = mlflow_tracking.configure(ProjectConfig())
    first, _ = mlflow_tracking.load_propensity_model(client, "churn", version=churn_run.version)
    second, _ = mlflow_tracking.load_propensity_model(client, "churn", version=again.version)
    assert type(first) is type(second)
    firsts, seconds = getattr(first, "components", [first]), getattr(second, "components", [second])
    if hasattr(first, "weights"):  # a blend: the same weights and maps, each family the same
        np.testing.assert_array_equal(first.weights, second.weights)
        np.testing.assert_array_equal(first.slopes, second.slopes)
    for one, other in zip(firsts, seconds, strict=True):
        assert type(one) is type(other)
        if hasattr(one, "booster_text"):
            assert one.booster_text == other.booster_text
        elif hasattr(one, "coef"):
            np.testing.assert_array_equal(one.coef, other.coef)
        else:
            np.testing.assert_array_equal(one.parameters, other.parameters)


def test_promote_compares_on_the_challengers_test_snapshot(churn_run, luma_ingested, tracking, runner):
    first = invoke(runner, "promote", "churn")
    assert first.exit_code == 0 and "becomes champion" in first.output
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    champion = str(client.get_model_version_by_alias("churn", "champion").version)
    # Retrained on the same data: the champion is scored on the new test snapshot, ties, stays.
    retrained = model_jobs.train_model("churn", luma_ingested, ProjectConfig())
    run = client.get_run(retrained.run_id)
    assert run.data.tags["compared_champion_version"] == champion
    assert run.data.metrics["champion_test_auc"] == pytest.approx(run.data.metrics["test_auc"])
    stay = invoke(runner, "promote", "churn")
    assert "not promoted" in stay.output and "on the challenger's test snapshot" in " ".join(
        stay.output.split()
    )
    assert str(client.get_model_version_by_alias("churn", "champion").version) == champion
    forced = invoke(runner, "promote", "churn", "--version", retrained.version)
    assert "promoted explicitly" in forced.output
    assert str(client.get_model_version_by_alias("churn", "champion").version) == retrained.version
    missing = invoke(runner, "promote", "churn", "--version", "999")
    assert missing.exit_code == 2 and "no version 999" in " ".join(missing.output.split())


def test_evaluate_logs_expected_vs_actual(churn_run, luma_ingested, tracking, runner):
    result = invoke(
        runner,
        "evaluate",
        "churn",
        "--events",
        str(luma_ingested),
        "--as-of",
        "2025-09-01",
        "--alias",
        "challenger",
    )
    assert result.exit_code == 0, result.output
    assert "buckets: predicted vs actual" in result.output
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs(
        [client.get_experiment_by_name("churn").experiment_id], "tags.step = 'evaluate'"
    )
    assert runs and "eval_auc" in runs[0].data.metrics
    late = invoke(
        runner,
        "evaluate",
        "churn",
        "--events",
        str(luma_ingested),
        "--as-of",
        "2025-11-20",
        "--alias",
        "challenger",
    )
    assert late.exit_code == 2 and "horizon ends after the data" in " ".join(late.output.split())


def test_evaluate_reports_the_metrics_of_the_snapshot(churn_run, luma_ingested, tracking, tmp_path):
    """The figures ``evaluate`` reports are those of the snapshot: recomputed here with sklearn
    from the snapshot's labels and the probabilities ``score`` writes for the same date."""
    import datetime as dt

    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from propensity.features.duckdb import DuckDBEngine
    from propensity.pipeline.jobs import evaluate as evaluate_jobs
    from propensity.pipeline.jobs import score as score_jobs
    from propensity.pipeline.jobs.config_files import load_model_config
    from propensity.pipeline.jobs.events import feature_set, load_events

    config, as_of = ProjectConfig(), dt.date(2025, 9, 1)
    result = evaluate_jobs.evaluate_model("churn", luma_ingested, config, as_of, version=churn_run.version)
    # the labels: the population snapshot at as_of with its outcome over the horizon
    loaded = load_events(luma_ingested, config, engine=DuckDBEngine(config))
    model_cfg = load_model_config("churn", config)
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(config), "churn", churn_run.version, None
    )
    fs = feature_set(loaded, config, before=as_of, categories=model.metadata.get("categories"))
    relation, _ = loaded.population_snapshot(fs, model_cfg, as_of, loaded.data_end())
    labels = loaded.frame(relation)[["profile_id", "label"]]
    # the probabilities: the score job's output for the same version and date
    score_jobs.score_model("churn", luma_ingested, config, as_of, tmp_path, version=churn_run.version)
    scores = pd.read_parquet(tmp_path / "model=churn" / f"as_of={as_of}")
    scores = scores[["profile_id", "probability"]]
    joined = labels.merge(scores, on="profile_id", how="inner", validate="one_to_one")
    assert len(joined) == len(labels) == result.rows
    y, p = joined["label"].to_numpy().astype(int), joined["probability"].to_numpy()
    metrics = result.metrics
    assert metrics["eval_rows"] == len(y) and metrics["eval_positives"] == y.sum()
    assert metrics["eval_base_rate"] == pytest.approx(y.mean())
    expected = {
        "auc": roc_auc_score(y, p),
        "average_precision": average_precision_score(y, p),
        "brier": brier_score_loss(y, p),
    }
    for name, value in expected.items():
        assert metrics[f"eval_{name}"] == pytest.approx(value, abs=1e-6), name
        # the interval holds the point value and is a real interval
        low, high = metrics[f"eval_{name}_ci_low"], metrics[f"eval_{name}_ci_high"]
        assert low < metrics[f"eval_{name}"] < high, (name, low, high)
    # the bucket table: the score table's buckets, with their actual and predicted rates
    scored = pd.read_parquet(tmp_path / "model=churn" / f"as_of={as_of}")[["profile_id", "bucket"]]
    per_bucket = joined.merge(scored, on="profile_id").groupby("bucket")
    table = result.buckets.set_index("bucket")
    assert table["profiles"].to_dict() == per_bucket.size().to_dict()
    assert table["positives"].to_dict() == per_bucket["label"].sum().to_dict()
    pd.testing.assert_series_equal(
        table["predicted_rate"].sort_index(),
        per_bucket["probability"].mean().sort_index(),
        check_names=False,
        atol=1e-6,
    )
    # calibration per bucket and overall, with the actual rates' Wilson intervals on their positives
    for bucket, row in table.iterrows():
        assert (row["actual_low"], row["actual_high"]) == pytest.approx(
            wilson_interval(row["positives"], row["profiles"])
        )
        inside = row["actual_low"] <= row["predicted_rate"] <= row["actual_high"]
        assert row["within_interval"] == inside
        assert metrics[f"eval_calibration_{bucket}_predicted"] == pytest.approx(row["predicted_rate"])
        assert metrics[f"eval_calibration_{bucket}_positives"] == row["positives"]
    assert metrics["eval_calibration_buckets_outside"] == (~table["within_interval"]).sum()
    assert metrics["eval_predicted_rate"] == pytest.approx(p.mean(), abs=1e-6)
    low, high = metrics["eval_base_rate_ci_low"], metrics["eval_base_rate_ci_high"]
    assert (low, high) == pytest.approx(wilson_interval(y.sum(), len(y))) and low < y.mean() < high


def test_too_few_positives_is_a_clear_error(luma_ingested, tracking, tmp_path, runner):
    model = tmp_path / "rare.yaml"
    model.write_text(
        "name: rare\npopulation: 'purchase_count_365d >= 1'\n"
        "outcome: {event_type: offer_redeemed, horizon_days: 7}\n"
        "training: {min_positives: 100000}\n"
    )
    result = invoke(runner, "train", str(model), "--events", str(luma_ingested))
    assert result.exit_code == 2
    assert "too few examples to train" in " ".join(result.output.split())


def test_split_is_out_of_time_and_profile_disjoint():
    rng = np.random.default_rng(0)
    dates = pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01"])
    frame = pd.DataFrame(
        {
            "profile_id": [f"p{i}" for i in range(2000)] * 4,
            "as_of": np.repeat(dates, 2000),
            "label": rng.random(8000) < 0.3,
        }
    )
    frame["label"] = frame["label"].astype(int)
    parts = split(frame, TrainingConfig(min_positives=10, min_negatives=10))
    test_profiles = set(parts.test["profile_id"])
    for name in ("train", "early_stopping", "calibration"):
        part = getattr(parts, name)
        assert not test_profiles & set(part["profile_id"]), name
        assert part["as_of"].max() < parts.test["as_of"].min()
    assert parts.train["as_of"].max() < parts.early_stopping["as_of"].min()
    assert not set(parts.early_stopping["profile_id"]) & set(parts.calibration["profile_id"])
    # Validation profiles are never trained on: their later snapshot would reward memorising them.
    validation = set(parts.early_stopping["profile_id"]) | set(parts.calibration["profile_id"])
    assert validation and not validation & set(parts.train["profile_id"])
    assert 0.2 < len(test_profiles) / 2000 < 0.4


def test_max_training_rows_samples_training_rows_by_label_only():
    rng = np.random.default_rng(0)
    dates = pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01", "2025-05-01"])
    frame = pd.DataFrame(
        {
            "profile_id": [f"p{i}" for i in range(3000)] * 5,
            "as_of": np.repeat(dates, 3000),
            "label": (rng.random(15_000) < 0.2).astype(int),
        }
    )
    whole = split(frame, TrainingConfig(min_positives=10, min_negatives=10))
    capped = split(frame, TrainingConfig(min_positives=10, min_negatives=10, max_training_rows=1000))
    assert len(whole.train) > 1000 and abs(len(capped.train) - 1000) <= 1
    assert capped.summary()["train"]["sampled_from"] == len(whole.train)
    assert "sampled_from" not in whole.summary()["train"]
    # The same share of each label, rows drawn from the training rows only, in their order.
    assert capped.train["label"].mean() == pytest.approx(whole.train["label"].mean(), abs=0.005)
    assert capped.train.index.isin(whole.train.index).all() and capped.train.index.is_monotonic_increasing
    # Validation and test keep every profile; a re-run draws the same rows.
    for name in ("early_stopping", "calibration", "test"):
        pd.testing.assert_frame_equal(getattr(capped, name), getattr(whole, name))
    again = split(frame, TrainingConfig(min_positives=10, min_negatives=10, max_training_rows=1000))
    pd.testing.assert_frame_equal(again.train, capped.train)


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_makes_probabilities_honest(method):
    rng = np.random.default_rng(1)
    logit = rng.normal(-2, 1.5, 40_000)
    y = (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(int)
    distorted = 3 * logit + 2  # a booster's over-confident, shifted log-odds
    raw_ece = ev.expected_calibration_error(y, 1 / (1 + np.exp(-distorted)))
    calibrator = Calibrator(method).fit(distorted[:20_000], y[:20_000])
    p = calibrator.transform(distorted[20_000:])
    assert ev.expected_calibration_error(y[20_000:], p) < 0.01 < raw_ece


def test_metrics_known_answers():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    result = ev.metrics(y, p)
    assert result["test_auc"] == 1.0 and result["test_average_precision"] == 1.0
    assert result["test_lift_at_10"] == pytest.approx(5.0) and result["test_capture_at_20"] == 1.0
    assert ev.scores_from_reference(np.array([0.05, 0.5, 0.95]), np.linspace(0, 1, 101)).tolist() == [
        5,
        50,
        95,
    ]
    assert ev.buckets(np.array([10, 40, 69, 70]), 40, 70).tolist() == ["low", "medium", "medium", "high"]


def test_rate_intervals_match_published_values():
    # Wilson: 81/263 (Newcombe 1998, Table I); Newcombe's method 10 for a difference (Table II).
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert rate_difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert rate_difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_bucket_table_says_which_buckets_came_true():
    # high: 0.30 predicted, 15/100 happened (interval ~[0.09, 0.23]): over-predicted;
    # low: 0.05 predicted, 10/200 happened (interval ~[0.03, 0.09]): within its interval.
    y = np.r_[np.ones(15), np.zeros(85), np.ones(10), np.zeros(190)]
    p = np.r_[np.full(100, 0.30), np.full(200, 0.05)]
    table = ev.bucket_table(y, p, np.array(["high"] * 100 + ["low"] * 200)).set_index("bucket")
    assert table.loc["high", "actual_high"] < 0.30 and not table.loc["high", "within_interval"]
    assert table.loc["low", "within_interval"]
    figures = ev.calibration_figures(y, p, table.reset_index(), "test_")
    assert figures["test_calibration_buckets_outside"] == 1
    assert figures["test_predicted_rate"] == pytest.approx((30 + 10) / 300)
    assert figures["test_calibration_high_actual"] == pytest.approx(0.15)
    assert figures["test_calibration_low_positives"] == 10


def test_reweighting_options_are_refused():
    assert "is_unbalance" not in DEFAULT_LIGHTGBM and "scale_pos_weight" not in DEFAULT_LIGHTGBM
    from propensity.core.config import ModelConfig, parse_config

    with pytest.raises(UserError, match="scale_pos_weight"):
        parse_config(ModelConfig, {"name": "m", "training": {"lightgbm": {"scale_pos_weight": 10}}}, "m.yaml")
