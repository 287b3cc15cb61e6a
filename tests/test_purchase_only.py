"""Purchase-only data (orders keyed by crm_id, nothing else): the registered model must beat
the RFM logistic regression and recency beyond their bootstrap intervals, and every figure
must carry its interval and the positives it rests on."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from propensity.core.config import ProjectConfig
from propensity.models import tracking as mlflow_tracking
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import train as model_jobs
from propensity.pipeline.jobs.config_files import load_model_config
from tests.conftest import invoke
from tests.purchase_data import write_purchase_only

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the purchase-only
# ingest and its trained model) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("purchase_only")


@pytest.fixture(scope="module")
def purchases(tmp_path_factory):
    """8,000 customers over two years, ingested once."""
    root = tmp_path_factory.mktemp("purchase_only")
    write_purchase_only(root / "raw", customers=8000, days=730, seed=1)
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig())
    return root / "ingested"


@pytest.fixture(scope="module")
def lighter(tmp_path_factory) -> ProjectConfig:
    """The shipped repeat_purchase model with 3 tuning trials (the defaults and two searched)
    instead of 12 and snapshots 14 days apart instead of 7 over the same history: what these
    tests check (beating the baselines on the test snapshot, intervals, child runs) is not the
    search, and the test snapshot keeps its size."""
    models = tmp_path_factory.mktemp("purchase_only_models")
    shipped = (Path(__file__).resolve().parents[1] / "configs/models/repeat_purchase.yaml").read_text()
    lighter = "training:\n  seed: 42\n  tuning: {trials: 3}\n  snapshots: {spacing_days: 14}\n"
    (models / "repeat_purchase.yaml").write_text(shipped.replace("training:\n  seed: 42\n", lighter))
    config = ProjectConfig(models_dir=str(models))
    model = load_model_config("repeat_purchase", config)
    assert model.training.tuning.trials == 3 and model.training.snapshots.spacing_days == 14
    return config


@pytest.fixture(scope="module")
def repeat_run(purchases, lighter, tracking):
    return model_jobs.train_model("repeat_purchase", purchases, lighter)


def test_registered_model_beats_rfm_and_recency_beyond_the_interval(repeat_run):
    m = repeat_run.metrics
    for baseline in ("logreg", "recency"):
        for metric in ("auc", "average_precision"):
            # The paired bootstrap interval of (model - baseline) lies above zero.
            assert m[f"test_{metric}_minus_baseline_{baseline}_ci_low"] > 0, (baseline, metric)
    # BG/NBD is measured too: the model does not lose to it, not even inside the paired interval.
    assert m["test_auc"] > m["baseline_bgnbd_auc"] and m["test_auc_minus_baseline_bgnbd_ci_high"] > 0


def test_every_test_figure_has_an_interval_and_its_positives(repeat_run, tracking):
    m = repeat_run.metrics
    for metric in ("auc", "average_precision", "brier", "log_loss"):
        assert m[f"test_{metric}_ci_low"] <= m[f"test_{metric}"] <= m[f"test_{metric}_ci_high"], metric
        assert m[f"test_{metric}_ci_high"] - m[f"test_{metric}_ci_low"] < 0.1, metric
    for baseline in ("logreg", "recency", "bgnbd"):
        assert m[f"baseline_{baseline}_auc_ci_low"] <= m[f"baseline_{baseline}_auc"]
    assert 100 < m["test_positives"] < m["test_rows"]
    run = MlflowClient(tracking_uri=tracking).get_run(repeat_run.run_id)
    assert run.data.metrics["test_auc_ci_low"] == pytest.approx(m["test_auc_ci_low"])
    assert run.data.metrics["test_positives"] == m["test_positives"]


def test_candidates_are_child_runs_and_the_winner_is_tagged(repeat_run, tracking):
    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(repeat_run.run_id)
    experiment = run.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{repeat_run.run_id}'")
    families = {c.data.tags["model_family"]: c for c in children}
    # Every family is a child run, and the blend too when it is what ships.
    assert {"lightgbm", "logistic", "bgnbd"} <= set(families) <= {"lightgbm", "logistic", "bgnbd", "blend"}
    for child in children:
        assert {"valid_auc", "valid_average_precision", "valid_log_loss", "valid_brier"} <= set(
            child.data.metrics
        )
    chosen = [c for c in children if c.data.tags["chosen"] == "True"]
    assert len(chosen) == 1 and chosen[0].data.tags["model_family"] == repeat_run.model_family
    # Chosen by validation log loss (the default selection metric), never by the test snapshot.
    losses = {f: c.data.metrics["valid_log_loss"] for f, c in families.items()}
    assert repeat_run.model_family == min(losses, key=losses.get)
    assert run.data.tags["model_family"] == repeat_run.model_family
    assert "validation log_loss" in run.data.tags["selection_reason"]
    version = client.get_model_version("repeat_purchase", repeat_run.version)
    assert version.tags["model_family"] == repeat_run.model_family
    trials = mlflow.artifacts.load_dict(f"runs:/{families['lightgbm'].info.run_id}/tuning/trials.json")
    assert len(trials["data"]) >= 2  # the defaults and at least one searched trial


def test_registered_model_scores_and_explains_through_one_interface(repeat_run, purchases, lighter, tracking):
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(ProjectConfig()), "repeat_purchase", version=repeat_run.version
    )
    loaded = event_jobs.load_events(purchases, ProjectConfig())
    as_of = repeat_run.snapshots[-1]
    fs = event_jobs.feature_set(
        loaded, ProjectConfig(), before=as_of, categories=model.metadata["categories"]
    )
    sql, _ = loaded.population_snapshot(
        fs, load_model_config("repeat_purchase", lighter), as_of, repeat_run.trained_until
    )
    frame = loaded.con.execute(sql).df().head(300)
    p = model.predict_proba(frame)
    assert np.all((p > 0) & (p < 1))
    contributions = model.contributions(frame)
    assert contributions.shape == (len(frame), len(model.feature_names) + 1)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(frame), rtol=1e-6, atol=1e-6)
    if hasattr(model, "top_contributions"):
        indices, impacts = model.top_contributions(model.matrix(frame), 5)
        assert indices.shape == impacts.shape == (len(frame), 5)
        assert np.all(np.diff(np.abs(impacts), axis=1) <= 1e-12)
    assert model.metadata["model_family"] == repeat_run.model_family


def test_promote_refuses_a_challenger_that_loses_to_a_baseline_unless_forced(tracking, runner):
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("weak")
    with mlflow.start_run() as run:
        mlflow.log_metrics(
            {
                "test_auc": 0.70,
                "baseline_logreg_auc": 0.74,
                "baseline_recency_auc": 0.72,
                "baseline_logreg_auc_ci_low": 0.6,
            }
        )
    client.create_registered_model("weak")
    version = client.create_model_version("weak", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("weak", "challenger", version.version)
    model_file = "name: weak\npopulation: 'purchase_count_365d >= 1'\n"
    path = __import__("pathlib").Path(tracking.removeprefix("sqlite:///")).parent / "weak.yaml"
    path.write_text(model_file)
    refused = invoke(runner, "promote", str(path))
    assert refused.exit_code == 0 and "not promoted" in refused.output
    assert "loses to the logreg baseline" in " ".join(refused.output.split())
    assert "champion" not in client.get_registered_model("weak").aliases
    explicit = invoke(runner, "promote", str(path), "--version", version.version)
    assert "not promoted" in explicit.output
    forced = invoke(runner, "promote", str(path), "--force")
    assert "promoted" in forced.output and "not promoted" not in forced.output
    assert client.get_registered_model("weak").aliases["champion"] == version.version
