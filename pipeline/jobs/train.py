"""The train, evaluate and promote jobs: events and MLflow in, typed summaries out."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.event_queries import data_end
from propensity.features.build.model_frames import population_snapshot_sql, training_frame
from propensity.features.build.population import population_rule
from propensity.features.build.selection import model_features
from propensity.features.build.snapshots import horizon_passed, snapshot_dates
from propensity.features.synthetic.oracle import oracle_probabilities
from propensity.models import baselines, plots, tracking
from propensity.models import evaluate as ev
from propensity.models.bootstrap import auc_ratio_interval, bootstrap_intervals
from propensity.models.explain import global_importance
from propensity.models.holdout_figures import holdout_figures
from propensity.models.snapshot_plan import adapt_snapshots
from propensity.models.train import fit_candidates, split
from propensity.pipeline.jobs import features as feature_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs.config_files import load_model_config


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
    model_family: str  # lightgbm | logistic: the candidate validation chose
    validation: dict[str, dict[str, float]]  # every candidate's validation metrics, by family
    selection_reason: str
    snapshot_plan: str | None  # why the snapshot plan differs from the config, if it does
    fit_seconds: float  # from reading the events to a fitted, calibrated model
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


def _adapted(model_cfg: ModelConfig, con, cutoff: dt.date) -> tuple[ModelConfig, str | None]:
    """The model config with the snapshot plan adapted to the span of the events."""
    first = con.execute("SELECT min(timestamp) FROM events").fetchone()[0]
    if first is None:
        raise UserError("no events to train on")
    snapshots, note = adapt_snapshots(
        model_cfg.training.snapshots,
        pd.Timestamp(first).date(),
        cutoff,
        model_cfg.outcome.horizon_days,
        model_cfg.name,
    )
    training = model_cfg.training.model_copy(update={"snapshots": snapshots})
    return model_cfg.model_copy(update={"training": training}), note


def _baselines(parts, test: pd.DataFrame, model_cfg: ModelConfig) -> dict[str, tuple[np.ndarray, bool]]:
    """Every baseline's test scores and whether they are probabilities."""
    out = {
        "logreg": (baselines.logreg_baseline(parts.train, test, model_cfg.training.seed), True),
        "recency": (baselines.recency_baseline(parts.train, test), False),
    }
    outcome = model_cfg.outcome
    # BG/NBD models any next purchase: a baseline only for outcomes that are exactly that.
    if outcome.event_type == "purchase" and not (
        outcome.category or outcome.min_revenue is not None or outcome.above_average_order_value
    ):
        bgnbd = baselines.bgnbd_baseline(parts.train, test, outcome.horizon_days, occurs=outcome.occurs)
        if bgnbd is not None:
            out["bgnbd"] = (bgnbd, True)
    return out


def _log_candidates(trained) -> None:
    """One child run per candidate: its parameters and validation metrics."""
    for candidate in trained.candidates:
        with mlflow.start_run(run_name=f"candidate {candidate.family}", nested=True):
            mlflow.set_tags(
                {
                    "step": "candidate",
                    "model_family": candidate.family,
                    "chosen": str(candidate is trained.chosen),
                }
            )
            mlflow.log_params({k: v for k, v in candidate.params.items() if not isinstance(v, dict)})
            mlflow.log_metrics(
                {
                    **{f"valid_{k}": v for k, v in candidate.validation.items()},
                    **{
                        f"valid_calibration_log_loss_{k}": v
                        for k, v in candidate.calibration_log_loss.items()
                    },
                    "fit_seconds": candidate.seconds,
                }
            )
            trials = candidate.details.get("trials")
            if trials:
                mlflow.log_table(pd.DataFrame(trials), "tuning/trials.json")
                mlflow.set_tag("tuning_timed_out", str(candidate.details.get("timed_out", False)))
            strengths = candidate.details.get("validation_log_loss_by_C")
            if strengths:
                mlflow.log_dict({str(k): v for k, v in strengths.items()}, "validation_log_loss_by_C.json")


def train_model(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> TrainResult:
    """Fit the candidates, choose one on validation, measure it and the baselines on the test
    snapshot with bootstrap intervals (and the oracle), log to MLflow, register as challenger."""
    started = time.perf_counter()
    model_cfg = load_model_config(model_name, config)
    loaded = ingest_jobs.load_events(events, config)
    con = loaded.con
    cutoff = as_of or data_end(con)
    model_cfg, snapshot_note = _adapted(model_cfg, con, cutoff)
    training = model_cfg.training
    plan = training.snapshots
    first_date = snapshot_dates(cutoff, model_cfg.outcome.horizon_days, plan.count, plan.spacing_days)[0]
    fs = feature_jobs.feature_set(con, config, before=first_date)
    # A bad rule or feature name fails before any heavy work.
    population_rule(model_cfg, fs)
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    frame, dates = training_frame(con, fs, model_cfg, cutoff, graph=loaded.graph)
    return fit_and_register(
        model_cfg,
        config,
        fs,
        labels,
        frame,
        dates,
        cutoff,
        loaded.inputs.display,
        snapshot_note=snapshot_note,
        started=started,
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
    snapshot_note: str | None = None,
    started: float | None = None,
    ground_truth: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None = None,
    sampling: dict[str, Any] | None = None,
) -> TrainResult:
    """Split, fit the candidates, evaluate and register a model on ``frame`` (stacked labelled
    snapshots, from DuckDB or a Spark sample; ``model_cfg`` with its snapshot plan already
    adapted, ``snapshot_note`` saying how). ``sampling`` says how the rows were drawn, for the
    run's record; ``started`` is when reading the events began (``fit_seconds``)."""
    started = time.perf_counter() if started is None else started
    training = model_cfg.training
    plan = training.snapshots
    names = list(labels)
    parts = split(frame, training)
    monotone = fs.monotone(model_cfg.outcome.occurs)  # quality: registry's monotone directions
    trained = fit_candidates(parts, names, labels, training, model_cfg.name, monotone)
    model = trained.model
    fit_seconds = time.perf_counter() - started

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
            "model_family": trained.chosen.family,
            "selection_reason": trained.reason,
        }
    )
    baseline_scores = _baselines(parts, test, model_cfg)
    results = holdout_figures(y, p, baseline_scores, training.bootstrap_resamples, training.seed)
    results.update({f"valid_{k}": v for k, v in trained.chosen.validation.items()})
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
        "snapshot_plan": snapshot_note or "as configured",
        "features": len(names),
        "model_family": trained.chosen.family,
        "selection_reason": trained.reason,
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
                "model_family": trained.chosen.family,
                "selection_reason": trained.reason,
                **({"snapshot_plan": snapshot_note} if snapshot_note else {}),
            }
        )
        chosen_params = {k: v for k, v in trained.chosen.params.items() if not isinstance(v, dict)}
        mlflow.log_params(
            {
                **{f"{trained.chosen.family}_{k}": v for k, v in chosen_params.items()},
                "calibration": trained.chosen.params["calibration"],
                "seed": training.seed,
                "horizon_days": model_cfg.outcome.horizon_days,
                "population": model_cfg.population,
                "snapshots": len(dates),
                "snapshot_spacing_days": plan.spacing_days,
                "test_as_of": str(dates[-1]),
                "features": len(names),
                "train_rows": len(parts.train),
                "test_rows": len(test),
                "selection_metric": training.selection_metric,
                "candidates": ",".join(training.candidates),
            }
        )
        mlflow.log_metrics({**results, "fit_seconds": fit_seconds})
        if sampling:
            mlflow.log_params(sampling)
        _log_candidates(trained)
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
        curves = {"model": p, "logistic regression (RFM)": baseline_scores["logreg"][0]}
        curves["recency"] = baseline_scores["recency"][0]
        if "bgnbd" in baseline_scores:
            curves["BG/NBD"] = baseline_scores["bgnbd"][0]
        for path in (
            plots.plot_gains(y, curves, out / "gains.png"),
            plots.plot_lift(deciles, out / "lift_by_decile.png"),
            plots.plot_calibration(y, p, out / "calibration.png"),
            plots.plot_distribution(y, p, out / "score_distribution.png"),
            plots.plot_importance(importance, out / "feature_importance.png"),
        ):
            mlflow.log_artifact(str(path), "plots")
        model_uri, version = tracking.log_model(model, test, model_cfg.name)
        client.set_registered_model_alias(model_cfg.name, tracking.CHALLENGER, version)
        client.set_model_version_tag(model_cfg.name, version, "trained_until", str(cutoff))
        client.set_model_version_tag(model_cfg.name, version, "model_family", trained.chosen.family)
        client.set_model_version_tag(model_cfg.name, version, "selection_reason", trained.reason)
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
        model_family=trained.chosen.family,
        validation={c.family: c.validation for c in trained.candidates},
        selection_reason=trained.reason,
        snapshot_plan=snapshot_note,
        fit_seconds=fit_seconds,
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
    sql, _ = population_snapshot_sql(fs, model_cfg, as_of, con, cutoff, graph=loaded.graph)
    frame = con.execute(sql).df()
    if frame["label"].nunique() < 2:
        raise UserError(
            f"the population at {as_of} has only one outcome ({len(frame)} profiles); cannot evaluate"
        )
    y, p = frame["label"].to_numpy(), model.predict_proba(frame)
    results = ev.metrics(y, p, prefix="eval_")
    results.update(_intervals(y, p, model_cfg.training, "eval_"))
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
