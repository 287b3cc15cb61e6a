"""Settings at non-default values: bucket thresholds, the monitor's PSI threshold, promotion's
metric and margin. Each test shows the behaviour follows the declared value, not the default."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from propensity.core.config import MonitorConfig, ProjectConfig
from propensity.models import monitoring
from propensity.models.scoring import score_batch
from propensity.pipeline.jobs import evaluate as evaluate_jobs
from tests.test_faults import _tiny_model


def _scored(buckets: dict | None) -> pd.DataFrame:
    model, frame = _tiny_model()
    model.metadata["reference_probabilities"] = model.predict_proba(frame).tolist()
    if buckets is not None:
        model.metadata["buckets"] = buckets
    batch = frame.assign(profile_id=[f"p{i}" for i in range(len(frame))])
    table = score_batch(
        model,
        batch,
        model_name="m",
        model_version="1",
        as_of=dt.date(2025, 1, 1),
        factors=0,
        scored_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    return table.to_pandas()


def test_custom_bucket_thresholds_decide_each_bucket_exactly():
    # the tiny model's scores: 0, 38, 40, 45, 49, 53, 65, 68 (no one reaches the default high, 70)
    default, custom = _scored(None), _scored({"medium": 45, "high": 65})
    pd.testing.assert_series_equal(default["score"], custom["score"])  # thresholds move buckets only
    score = custom["score"].to_numpy()
    expected = np.where(score >= 65, "high", np.where(score >= 45, "medium", "low"))
    np.testing.assert_array_equal(custom["bucket"].to_numpy(), expected)
    # the thresholds are inclusive, and every bucket is populated
    assert set(custom["bucket"]) == {"low", "medium", "high"}
    assert set(custom.loc[score == 65, "bucket"]) == {"high"} and set(custom.loc[score == 45, "bucket"]) == {
        "medium"
    }
    assert set(default["bucket"]) == {"low", "medium"}
    # versus the defaults (40 / 70): exactly the people between the two sets of thresholds move
    moved = (custom["bucket"] != default["bucket"]).to_numpy()
    np.testing.assert_array_equal(moved, ((score >= 40) & (score < 45)) | ((score >= 65) & (score < 70)))
    assert moved.sum() > 100


def test_a_stricter_psi_threshold_flags_a_drift_the_default_does_not():
    model, _ = _tiny_model()
    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"probability": rng.beta(2, 5, size=4000)})
    current = pd.DataFrame({"probability": rng.beta(2.5, 5, size=4000)})  # a moderate shift
    args = (model, reference, current)
    default = monitoring.monitor(*args, MonitorConfig(top_features=0), "2025-02-01", "2025-01-01")
    assert 0.02 < default.score.psi < 0.2  # moderate: below the default threshold
    assert not default.alert and default.drifted == []
    strict = monitoring.monitor(
        *args, MonitorConfig(top_features=0, psi_threshold=0.02), "2025-02-01", "2025-01-01"
    )
    assert strict.score.psi == default.score.psi  # same measure, another threshold
    assert strict.alert and strict.drifted == ["probability"]
    assert strict.to_dict()["psi_threshold"] == 0.02


def _registered(tmp_path, monkeypatch, champion: dict, challenger: dict) -> MlflowClient:
    """Two versions of model `m` whose runs logged ``champion`` / ``challenger`` metrics."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("m")
    client.create_registered_model("m")
    for metrics, alias in ((champion, "champion"), (challenger, "challenger")):
        run = client.create_run(experiment)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias("m", alias, mv.version)
    return client


def _model_yaml(tmp_path, **training) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "m",
                "population": "purchase_count_365d >= 1",
                "outcome": {"event_type": "purchase", "horizon_days": 60},
                "training": training,
            }
        )
    )
    return str(path)


@pytest.mark.parametrize(
    ("training", "promoted"),
    [
        ({}, True),  # defaults: test_auc, any improvement
        ({"promote_min_improvement": 0.05}, False),  # +0.02 AUC is not enough
        ({"promote_metric": "test_brier"}, False),  # better AUC, worse Brier
        ({"promote_metric": "test_brier", "promote_min_improvement": -0.02}, True),  # tolerated loss
    ],
)
def test_promotion_settings_change_the_decision(tmp_path, monkeypatch, training, promoted):
    client = _registered(
        tmp_path,
        monkeypatch,
        champion={"test_auc": 0.70, "test_brier": 0.100},
        challenger={"test_auc": 0.72, "test_brier": 0.110},
    )
    outcome = evaluate_jobs.promote_model(_model_yaml(tmp_path, **training), ProjectConfig())
    assert outcome.promoted is promoted, outcome.reason
    champion = str(client.get_model_version_by_alias("m", "champion").version)
    assert champion == ("2" if promoted else "1")
    metric = training.get("promote_metric", "test_auc")
    assert metric in outcome.reason


@pytest.mark.slow
def test_tuning_trials_and_sigmoid_calibration_are_what_training_does(tmp_path, monkeypatch):
    """``training.tuning.trials: 2`` runs two Optuna trials (default 12) and ``calibration: sigmoid``
    calibrates with a sigmoid (default auto): both in the registered model and its MLflow run."""
    import json

    from propensity.features.synthetic import GeneratorSettings, generate
    from propensity.models import tracking as mlflow_tracking
    from propensity.pipeline.jobs import ingest as ingest_jobs
    from propensity.pipeline.jobs import train as train_jobs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    generate(GeneratorSettings(profiles=2000, days=330, seed=3), tmp_path / "raw")
    ingest_jobs.ingest(tmp_path / "raw", tmp_path / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    model_cfg = yaml.safe_load((Path(__file__).parents[1] / "configs/models/churn.yaml").read_text())
    model_cfg["name"] = "settings_churn"
    model_cfg["training"].update(
        {"candidates": ["lightgbm"], "calibration": "sigmoid", "tuning": {"trials": 2}}
    )
    path = tmp_path / "settings_churn.yaml"
    path.write_text(yaml.safe_dump(model_cfg))
    result = train_jobs.train_model(str(path), tmp_path / "ingested", ProjectConfig())
    client = MlflowClient(tracking_uri=uri)
    model, _ = mlflow_tracking.load_propensity_model(client, "settings_churn", result.version, None)
    assert model.metadata["calibration"]["method"] == "sigmoid"
    assert model.calibrator.method == "sigmoid"
    assert client.get_run(result.run_id).data.params["calibration"] == "sigmoid"
    children = client.search_runs(
        [client.get_experiment_by_name("settings_churn").experiment_id], "tags.step = 'candidate'"
    )
    assert [c.data.params["calibration"] for c in children] == ["sigmoid"]
    trials = json.loads(
        Path(client.download_artifacts(children[0].info.run_id, "tuning/trials.json")).read_text()
    )
    assert len(trials["data"]) == 2


@pytest.mark.parametrize(
    ("interval", "promoted", "said"),
    [
        ((-0.004, 0.002), True, "no worse than bgnbd"),  # 0.001 AUC of noise: ships
        ((-0.012, -0.002), False, "worse than bgnbd"),  # worse beyond the interval: refused
        ((0.001, 0.009), True, "better than bgnbd"),
    ],
)
def test_promotion_refuses_only_a_loss_to_a_baseline_beyond_its_paired_interval(
    tmp_path, monkeypatch, interval, promoted, said
):
    low, high = interval
    challenger = {
        "test_auc": 0.776 + (low + high) / 2,
        "baseline_bgnbd_auc": 0.777,
        "test_auc_minus_baseline_bgnbd_ci_low": low,
        "test_auc_minus_baseline_bgnbd_ci_high": high,
        "baseline_recency_auc": 0.70,
        "test_auc_minus_baseline_recency_ci_low": 0.05,
        "test_auc_minus_baseline_recency_ci_high": 0.10,
    }
    client = _registered(tmp_path, monkeypatch, champion={"test_auc": 0.60}, challenger=challenger)
    client.delete_registered_model_alias("m", "champion")
    outcome = evaluate_jobs.promote_model(_model_yaml(tmp_path), ProjectConfig())
    assert outcome.promoted is promoted, outcome.reason
    assert said in outcome.reason and "better than recency" in outcome.reason
    assert f"[{low:+.4f}, {high:+.4f}]" in outcome.reason


def test_promotion_says_whether_the_challenger_beats_the_champion_beyond_the_interval(tmp_path, monkeypatch):
    challenger = {
        "test_auc": 0.781,
        "champion_test_auc": 0.779,
        "test_auc_minus_champion_ci_low": -0.001,
        "test_auc_minus_champion_ci_high": 0.005,
    }
    client = _registered(tmp_path, monkeypatch, champion={"test_auc": 0.70}, challenger=challenger)
    run_id = client.get_model_version("m", "2").run_id
    client.set_tag(run_id, "compared_champion_version", "1")
    outcome = evaluate_jobs.promote_model(_model_yaml(tmp_path), ProjectConfig())
    assert outcome.promoted and "no worse than the champion" in outcome.reason, outcome.reason
    assert "0.7790" in outcome.reason and "[-0.0010, +0.0050]" in outcome.reason
