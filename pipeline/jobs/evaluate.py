"""The evaluate and promote jobs: a registered version measured on a later snapshot, and the
champion alias moved when a challenger is better."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.snapshots import horizon_passed
from propensity.features.duckdb import DuckDBEngine
from propensity.features.engine import Events
from propensity.models import evaluate as ev
from propensity.models import tracking
from propensity.models.bootstrap import auc_ratio_interval, bootstrap_intervals
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import feature_set, load_events, model_vocabulary, scoring_feature_set


@dataclass(frozen=True)
class EvaluationResult:
    """A registered version scored on a later snapshot whose horizon has passed."""

    run_id: str
    version: str
    as_of: dt.date
    rows: int
    metrics: dict[str, float]
    buckets: pd.DataFrame


def ground_truth_metrics(
    loaded: Events, frame: pd.DataFrame, p: np.ndarray, model: ModelConfig
) -> dict[str, float]:
    """The model against a synthetic world's true probabilities (nothing without one)."""
    oracle = loaded.oracle(frame, model.outcome)
    if oracle is None:
        return {}
    known = ~np.isnan(oracle)
    y = frame["label"].to_numpy()
    if known.sum() < 50 or len(np.unique(y[known])) < 2:
        return {}
    oracle_auc = roc_auc_score(y[known], oracle[known])
    model_auc = roc_auc_score(y[known], p[known])
    # A ratio on ~100 positives moves by several points between samples: its own interval
    # says whether a shortfall against the oracle is real.
    low, high = auc_ratio_interval(
        y[known], p[known], oracle[known], model.training.bootstrap_resamples, model.training.seed
    )
    return {
        "oracle_auc": float(oracle_auc),
        "auc_to_oracle": float(model_auc / oracle_auc),
        "auc_to_oracle_ci_low": low,
        "auc_to_oracle_ci_high": high,
        "oracle_coverage": float(known.mean()),
    }


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
    # DuckDB only, whatever the config's engine: one version scored on one snapshot.
    loaded = load_events(events, config, engine=DuckDBEngine(config))
    cutoff = loaded.data_end()
    if not horizon_passed(as_of, model_cfg.outcome.horizon_days, cutoff):
        raise UserError(
            f"--as-of {as_of}: its {model_cfg.outcome.horizon_days}-day horizon ends after the data "
            f"(last complete day {cutoff - dt.timedelta(days=1)}); choose an earlier date"
        )
    fs = feature_set(loaded, config, before=as_of, **model_vocabulary(model.metadata))
    fs = scoring_feature_set(fs, loaded, model, as_of, config)
    relation, _ = loaded.population_snapshot(fs, model_cfg, as_of, cutoff)
    frame = loaded.frame(relation)
    if frame["label"].nunique() < 2:
        raise UserError(
            f"the population at {as_of} has only one outcome ({len(frame)} profiles); cannot evaluate"
        )
    y, p = frame["label"].to_numpy(), model.predict_proba(frame)
    results = ev.metrics(y, p, prefix="eval_")
    results.update(_intervals(y, p, model_cfg.training, "eval_"))
    results.update({f"eval_{k}": v for k, v in ground_truth_metrics(loaded, frame, p, model_cfg).items()})
    buckets_cfg = model.metadata.get("buckets", model_cfg.buckets.model_dump())
    score = ev.scores_from_reference(p, np.asarray(model.metadata["reference_probabilities"]))
    table = ev.bucket_table(y, p, ev.buckets(score, buckets_cfg["medium"], buckets_cfg["high"]))
    results.update(ev.calibration_figures(y, p, table, "eval_"))
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


def _intervals(y: np.ndarray, p: np.ndarray, training, prefix: str) -> dict[str, float]:
    """Bootstrap intervals of a model's metrics and the positives they rest on."""
    intervals = bootstrap_intervals(y, {"model": p}, {"model"}, training.bootstrap_resamples, training.seed)
    out = {f"{prefix}positives": float(np.sum(y)), f"{prefix}rows": float(len(y))}
    for metric, (low, high) in intervals["model"].items():
        out[f"{prefix}{metric}_ci_low"], out[f"{prefix}{metric}_ci_high"] = low, high
    return out


def promote_model(
    model_name: str, config: ProjectConfig, version: str | None = None, force: bool = False
) -> tracking.Promotion:
    """Move the champion alias to the challenger when it is better, or to ``version``; refused
    when it loses to the best baseline on its test snapshot, unless ``force``."""
    model_cfg = load_model_config(model_name, config)
    client = tracking.configure(config)
    return tracking.promote(
        client,
        model_cfg.name,
        model_cfg.training.promote_metric,
        model_cfg.training.promote_min_improvement,
        version,
        force=force,
    )
