"""The train job: stacked labelled snapshots on the config's engine
(:func:`propensity.pipeline.jobs.training_data.training_data`), fitted on this machine,
evaluated on the test snapshot, logged to MLflow and registered as the challenger."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.outcome_rate import AS_OF_FAMILIES
from propensity.models import baselines, tracking
from propensity.models import evaluate as ev
from propensity.models.explain import global_importance
from propensity.models.holdout_figures import holdout_figures
from propensity.models.refit import refit_rows, refit_trained
from propensity.models.split import split
from propensity.models.train import fit_candidates
from propensity.pipeline.jobs.evaluate import ground_truth_metrics
from propensity.pipeline.jobs.events import engine_for
from propensity.pipeline.jobs.train_record import champion_on, log_training_run, register_challenger
from propensity.pipeline.jobs.training_data import Fitted, TestFigures, TrainingData, training_data
from propensity.pipeline.jobs.uplift import UpliftTrained, fit_uplift_model


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
    plan: str  # the snapshot plan for people (dates, roles, adaptations, rows and positives)
    fit_seconds: float  # from reading the events to a fitted, calibrated model
    trained_until: dt.date
    model: str = ""
    feature_note: str = ""  # what the feature count is made of, to compare with `features`
    warnings: list[str] = field(default_factory=list)  # e.g. windows longer than the data


def baseline_scores(parts, test: pd.DataFrame, model_cfg: ModelConfig) -> dict[str, tuple[np.ndarray, bool]]:
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


def train_model(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    on_plan: Callable[[str, pd.DataFrame], None] | None = None,
) -> TrainResult:
    """Fit the candidates, choose one on validation, measure it and the baselines on the test
    snapshot with bootstrap intervals (and the oracle), log to MLflow, register as challenger.
    The snapshots are built on the config's engine; the fit runs on this machine. ``on_plan``
    receives the snapshot plan (sentences and table) before any model is fitted."""
    started = time.perf_counter()
    loaded = engine_for(config).load_events(events)
    data = training_data(model_name, loaded, config, as_of)
    if on_plan is not None:
        on_plan(data.plan_text(), data.plan_table())
    if data.model.treatment is not None:
        return _uplift_result(data, fit_uplift_model(data, loaded, config, started))
    return fit_and_register(
        data, config, started, ground_truth=lambda test, p: ground_truth_metrics(loaded, test, p, data.model)
    )


def _from_data(data: TrainingData) -> dict[str, Any]:
    """The fields of a train result that come from the training data, for every kind of model."""
    return {
        "snapshots": list(data.dates),
        "features": len(data.labels),
        "snapshot_plan": data.snapshot_note,
        "plan": data.plan_text(),
        "trained_until": data.cutoff,
        "model": data.model.name,
        "feature_note": data.feature_note,
        "warnings": list(data.warnings),
    }


def _uplift_result(data: TrainingData, trained: UpliftTrained) -> TrainResult:
    """An uplift model's train run in the train job's terms (no feature importance: the factors
    of scores explain the uplift)."""
    qini = trained.model.metadata["validation_qini"]
    reason = f"{trained.model.learner}-learner: best validation Qini " + ", ".join(
        f"{learner} {value:.5f}" for learner, value in qini.items()
    )
    return TrainResult(
        run_id=trained.run_id,
        version=trained.version,
        model_uri=trained.model_uri,
        metrics=trained.metrics,
        buckets=trained.buckets,
        importance=pd.DataFrame(columns=["feature", "label", "importance"]),
        rows=trained.rows,
        model_family=f"uplift_{trained.model.learner}",
        validation={learner: {"qini": value} for learner, value in qini.items()},
        selection_reason=reason,
        fit_seconds=trained.fit_seconds,
        **_from_data(data),
    )


def fit(data: TrainingData, started: float) -> Fitted:
    """Split by snapshot and fit every candidate; validation chooses one, which is then fitted
    again on every snapshot before the test snapshot (``training.refit``)."""
    training = data.model.training
    try:
        parts = split(data.frame, training, data.plan.validation, share=data.validation_share)
    except UserError as error:
        table = data.plan_table()
        shown = "; ".join(
            f"{r.as_of} {r.role}: {r.population} ({r.positives} positives)" for r in table.itertuples()
        )
        raise UserError(f"model '{data.model.name}': {error} (population per snapshot: {shown})") from None
    monotone = data.fs.monotone(data.model.outcome.occurs)  # quality: the registry's monotone directions
    trained = fit_candidates(
        parts, list(data.labels), data.labels, training, data.model.name, monotone, data.model.outcome
    )
    done = None
    if training.refit:
        rows, sampled_from = refit_rows(data.frame, training, data.plan.test)
        done = refit_trained(trained, rows, training, sampled_from)
    return Fitted(parts, trained, time.perf_counter() - started, done)


def evaluate_on_test(
    data: TrainingData,
    fitted: Fitted,
    ground_truth: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None,
) -> TestFigures:
    """The chosen model on the test snapshot against the baselines, with intervals; records what
    scoring needs (reference distribution, buckets, outcome, ...) in the model's metadata."""
    model_cfg, trained, test = data.model, fitted.trained, fitted.parts.test
    model, training = trained.model, model_cfg.training
    y, p = test["label"].to_numpy(), model.predict_proba(test)
    reference = np.quantile(p, np.linspace(0, 1, 1001))
    model.metadata.update(
        {
            "reference_probabilities": reference.tolist(),
            "buckets": model_cfg.buckets.model_dump(),
            "outcome": model_cfg.outcome.model_dump(),
            "population": model_cfg.population,
            "categories": data.fs.categories,
            "event_types": data.fs.event_types,
            "trained_until": str(data.cutoff),
            "test_as_of": str(data.dates[-1]),
            "model_family": trained.chosen.family,
            "selection_reason": trained.reason,
            "as_of_features": [
                f.name for f in data.fs.features if f.family in AS_OF_FAMILIES and f.name in data.labels
            ],
        }
    )
    scored_baselines = baseline_scores(fitted.parts, test, model_cfg)
    results = holdout_figures(y, p, scored_baselines, training.bootstrap_resamples, training.seed)
    results.update({f"valid_{k}": v for k, v in trained.chosen.validation.items()})
    results.update(ground_truth(test, p) if ground_truth else {})
    score = ev.scores_from_reference(p, reference)
    buckets = ev.bucket_table(y, p, ev.buckets(score, model_cfg.buckets.medium, model_cfg.buckets.high))
    results.update(ev.calibration_figures(y, p, buckets, "test_"))
    importance = global_importance(model, test.sample(min(len(test), 20_000), random_state=0))
    return TestFigures(test, y, p, results, scored_baselines, buckets, ev.decile_table(y, p), importance)


def fit_and_register(
    data: TrainingData,
    config: ProjectConfig,
    started: float | None = None,
    ground_truth: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None = None,
) -> TrainResult:
    """Fit, evaluate on the test snapshot, log to MLflow and register a model on ``data``
    (stacked labelled snapshots from either engine); ``started`` is when reading the events
    began (``fit_seconds``)."""
    fitted = fit(data, time.perf_counter() if started is None else started)
    figures = evaluate_on_test(data, fitted, ground_truth)
    client = tracking.configure(config)
    champion = champion_on(client, data.model, figures)
    mlflow.set_experiment(data.model.name)
    with mlflow.start_run(run_name=f"train {data.model.name} until {data.cutoff}") as run:
        log_training_run(data, config, fitted, figures, champion)
        model_uri, version = register_challenger(client, data, fitted, figures.test)
        run_id = run.info.run_id
    trained = fitted.trained
    return TrainResult(
        run_id=run_id,
        version=version,
        model_uri=model_uri,
        metrics=figures.metrics,
        buckets=figures.buckets,
        importance=figures.importance,
        rows=fitted.parts.summary(),
        model_family=trained.chosen.family,
        validation={c.family: c.validation for c in trained.candidates},
        selection_reason=trained.reason,
        fit_seconds=fitted.fit_seconds,
        **_from_data(data),
    )
