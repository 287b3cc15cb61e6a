"""The train, evaluate and promote jobs: events and MLflow in, typed summaries out."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.event_queries import data_end
from propensity.features.labels import (
    horizon_passed,
    population_rule,
    population_snapshot_sql,
    snapshot_dates,
    training_frame,
)
from propensity.features.registry import model_features
from propensity.features.synthetic import oracle_probabilities
from propensity.models import evaluate as ev
from propensity.models import tracking
from propensity.models.explain import global_importance
from propensity.models.train import fit, split
from propensity.pipeline import feature_jobs, ingest_jobs
from propensity.pipeline.config_files import load_model_config


@dataclass(frozen=True)
class TrainResult:
    """A trained, logged and registered model: where it is and how it did on its test snapshot."""

    run_id: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    buckets: pd.DataFrame  # predicted vs actual per bucket on the test snapshot
    importance: pd.DataFrame
    rows: dict[str, Any]  # rows, positives and dates of each part of the split
    snapshots: list[dt.date]  # oldest first; the last is the test snapshot
    features: int
    best_iteration: int
    trained_until: dt.date


@dataclass(frozen=True)
class EvaluationResult:
    """A registered version scored on a later snapshot whose horizon has passed."""

    run_id: str
    version: str
    as_of: dt.date
    rows: int
    metrics: dict[str, float]
    buckets: pd.DataFrame


def _ground_truth_metrics(loaded, frame: pd.DataFrame, p: np.ndarray, model: ModelConfig) -> dict[str, float]:
    if loaded.inputs.ground_truth is None:
        return {}
    oracle = oracle_probabilities(loaded.con, frame, model.outcome, loaded.inputs.ground_truth).to_numpy()
    known = ~np.isnan(oracle)
    y = frame["label"].to_numpy()
    if known.sum() < 50 or len(np.unique(y[known])) < 2:
        return {}
    oracle_auc = ev.roc_auc_score(y[known], oracle[known])
    model_auc = ev.roc_auc_score(y[known], p[known])
    return {
        "oracle_auc": float(oracle_auc),
        "auc_to_oracle": float(model_auc / oracle_auc),
        "oracle_coverage": float(known.mean()),
    }


def train_model(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> dict:
    """Train, evaluate against baselines (and the oracle), log to MLflow, register as challenger."""
    model_cfg = load_model_config(model_name, config)
    loaded = ingest_jobs.load_events(events, config)
    con = loaded.con
    cutoff = as_of or data_end(con)
    spacing = model_cfg.training.snapshots
    first_date = snapshot_dates(cutoff, model_cfg.outcome.horizon_days, spacing.count, spacing.spacing_days)[
        0
    ]
    fs = feature_jobs.feature_set(con, config, before=first_date)
    # A bad rule or feature name fails before any heavy work.
    population_rule(model_cfg, fs)
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    frame, dates = training_frame(con, fs, model_cfg, cutoff)
    return fit_and_register(
        model_cfg,
        config,
        fs,
        labels,
        frame,
        dates,
        cutoff,
        loaded.inputs.display,
        ground_truth=lambda test, p: _ground_truth_metrics(loaded, test, p, model_cfg),
    )


def fit_and_register(
    model_cfg: ModelConfig,
    config: ProjectConfig,
    fs,
    labels: dict[str, str],
    frame: pd.DataFrame,
    dates: list[dt.date],
    cutoff: dt.date,
    events_display: str,
    ground_truth: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None = None,
    sampling: dict[str, Any] | None = None,
) -> TrainResult:
    """Split, fit, evaluate and register a model on ``frame`` (stacked labelled snapshots, from
    DuckDB or a Spark sample); ``sampling`` says how the rows were drawn, for the run's record."""
    names = list(labels)
    parts = split(frame, model_cfg.training)
    model, fit_info = fit(parts, names, labels, model_cfg.training, model_cfg.name)

    test = parts.test
    y = test["label"].to_numpy()
    p = model.predict_proba(test)
    reference = np.quantile(p, np.linspace(0, 1, 1001))
    model.metadata.update(
        {
            "reference_probabilities": reference.tolist(),
            "buckets": model_cfg.buckets.model_dump(),
            "outcome": model_cfg.outcome.model_dump(),
            "population": model_cfg.population,
            "categories": fs.categories,
            "trained_until": str(cutoff),
            "test_as_of": str(dates[-1]),
        }
    )
    results = ev.metrics(y, p)
    recency = ev.recency_baseline(parts.train, test)
    logreg = ev.logreg_baseline(parts.train, test, model_cfg.training.seed)
    results["baseline_recency_auc"] = float(ev.roc_auc_score(y, recency))
    results["baseline_logreg_auc"] = float(ev.roc_auc_score(y, logreg))
    results.update(
        {
            f"baseline_logreg_{k[5:]}": v
            for k, v in ev.metrics(y, logreg).items()
            if k in ("test_average_precision", "test_lift_at_10")
        }
    )
    results.update(ground_truth(test, p) if ground_truth else {})
    score = ev.scores_from_reference(p, reference)
    bucket_table = ev.bucket_table(y, p, ev.buckets(score, model_cfg.buckets.medium, model_cfg.buckets.high))
    deciles = ev.decile_table(y, p)
    importance = global_importance(model, test.sample(min(len(test), 20_000), random_state=0))

    client = tracking.configure(config)
    champion = _champion_on(client, model_cfg.name, test, y)
    mlflow.set_experiment(model_cfg.name)
    summary = {
        "rows": parts.summary(),
        "snapshots": [str(d) for d in dates],
        "features": len(names),
        "best_iteration": fit_info["best_iteration"],
        "trained_until": str(cutoff),
    }  # logged as training_data.json
    with (
        mlflow.start_run(run_name=f"train {model_cfg.name} until {cutoff}") as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp)
        mlflow.set_tags(
            {
                "git_commit": tracking.git_commit() or "unknown",
                "events": events_display,
                "step": "train",
                "trained_until": str(cutoff),
            }
        )
        mlflow.log_params(
            {
                **{f"lgbm_{k}": v for k, v in fit_info["params"].items()},
                "calibration": model_cfg.training.calibration,
                "seed": model_cfg.training.seed,
                "horizon_days": model_cfg.outcome.horizon_days,
                "population": model_cfg.population,
                "snapshots": len(dates),
                "snapshot_spacing_days": model_cfg.training.snapshots.spacing_days,
                "test_as_of": str(dates[-1]),
                "features": len(names),
                "best_iteration": fit_info["best_iteration"],
                "train_rows": len(parts.train),
                "test_rows": len(test),
            }
        )
        mlflow.log_metrics(results)
        if sampling:
            mlflow.log_params(sampling)
        if champion is not None:
            # What `promote` compares against: the champion on this very test snapshot.
            mlflow.set_tag("compared_champion_version", champion[0])
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion[1].items()})
        mlflow.log_dict(model_cfg.model_dump(mode="json"), "config/model.json")
        mlflow.log_dict(config.model_dump(mode="json"), "config/project.json")
        mlflow.log_dict({"features": [{"name": n, "label": labels[n]} for n in names]}, "features.json")
        mlflow.log_dict(summary, "training_data.json")
        mlflow.log_table(bucket_table, "evaluation/buckets.json")
        mlflow.log_table(deciles, "evaluation/deciles.json")
        mlflow.log_table(importance, "evaluation/feature_importance.json")
        for path in (
            ev.plot_gains(
                y, {"model": p, "logistic regression (RFM)": logreg, "recency": recency}, out / "gains.png"
            ),
            ev.plot_lift(deciles, out / "lift_by_decile.png"),
            ev.plot_calibration(y, p, out / "calibration.png"),
            ev.plot_distribution(y, p, out / "score_distribution.png"),
            ev.plot_importance(importance, out / "feature_importance.png"),
        ):
            mlflow.log_artifact(str(path), "plots")
        model_uri, version = tracking.log_model(model, test, model_cfg.name)
        client.set_registered_model_alias(model_cfg.name, tracking.CHALLENGER, version)
        client.set_model_version_tag(model_cfg.name, version, "trained_until", str(cutoff))
        run_id = run.info.run_id
    return TrainResult(
        run_id=run_id,
        version=version,
        model_uri=model_uri,
        metrics=results,
        buckets=bucket_table,
        importance=importance,
        rows=parts.summary(),
        snapshots=list(dates),
        features=len(names),
        best_iteration=fit_info["best_iteration"],
        trained_until=cutoff,
    )


def _champion_on(client, name: str, test: pd.DataFrame, y: np.ndarray) -> tuple[str, dict] | None:
    """The current champion's test metrics on this test snapshot, if there is one that fits it."""
    try:
        champion, mv = tracking.load_propensity_model(client, name, alias=tracking.CHAMPION)
        return str(mv.version), ev.metrics(y, champion.predict_proba(test))
    except UserError:
        # No champion yet, or one built on features this table lacks (other categories).
        return None


def evaluate_model(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date,
    version: str | None = None,
    alias: str | None = None,
) -> EvaluationResult:
    """Expected vs actual for a registered version on a snapshot whose horizon has passed."""
    model_cfg = load_model_config(model_name, config)
    client = tracking.configure(config)
    model, mv = tracking.load_propensity_model(client, model_cfg.name, version, alias)
    loaded = ingest_jobs.load_events(events, config)
    con = loaded.con
    cutoff = data_end(con)
    if not horizon_passed(as_of, model_cfg.outcome.horizon_days, cutoff):
        raise UserError(
            f"--as-of {as_of}: its {model_cfg.outcome.horizon_days}-day horizon ends after the data "
            f"(last complete day {cutoff - dt.timedelta(days=1)}); choose an earlier date"
        )
    fs = feature_jobs.feature_set(con, config, before=as_of, categories=model.metadata.get("categories"))
    sql, _ = population_snapshot_sql(fs, model_cfg, as_of, con, cutoff)
    frame = con.execute(sql).df()
    if frame["label"].nunique() < 2:
        raise UserError(
            f"the population at {as_of} has only one outcome ({len(frame)} profiles); cannot evaluate"
        )
    y, p = frame["label"].to_numpy(), model.predict_proba(frame)
    results = ev.metrics(y, p, prefix="eval_")
    results.update({f"eval_{k}": v for k, v in _ground_truth_metrics(loaded, frame, p, model_cfg).items()})
    buckets_cfg = model.metadata.get("buckets", model_cfg.buckets.model_dump())
    score = ev.scores_from_reference(p, np.asarray(model.metadata["reference_probabilities"]))
    table = ev.bucket_table(y, p, ev.buckets(score, buckets_cfg["medium"], buckets_cfg["high"]))
    mlflow.set_experiment(model_cfg.name)
    with mlflow.start_run(run_name=f"evaluate v{mv.version} at {as_of}") as run:
        mlflow.set_tags(
            {
                "step": "evaluate",
                "evaluated_version": mv.version,
                "as_of": str(as_of),
                "git_commit": tracking.git_commit() or "unknown",
            }
        )
        mlflow.log_metrics(results)
        mlflow.log_table(table, "evaluation/buckets.json")
    return EvaluationResult(
        run_id=run.info.run_id,
        version=str(mv.version),
        as_of=as_of,
        rows=len(frame),
        metrics=results,
        buckets=table,
    )


def promote_model(model_name: str, config: ProjectConfig, version: str | None = None) -> tracking.Promotion:
    """Move the champion alias to the challenger when it is better, or to ``version``."""
    model_cfg = load_model_config(model_name, config)
    client = tracking.configure(config)
    return tracking.promote(
        client,
        model_cfg.name,
        model_cfg.training.promote_metric,
        model_cfg.training.promote_min_improvement,
        version,
    )
