"""The train job: stacked labelled snapshots on the config's engine, fitted on this machine,
evaluated on the test snapshot, logged to MLflow and registered as the challenger."""

from __future__ import annotations

import datetime as dt
import tempfile
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
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.outcome_rate import AS_OF_FAMILIES
from propensity.features.build.population import population_rule
from propensity.features.build.selection import categories_source, feature_count_note, model_features
from propensity.features.build.snapshots import snapshot_dates, windows_before_data
from propensity.features.engine import Events
from propensity.models import baselines, plots, tracking
from propensity.models import evaluate as ev
from propensity.models.bootstrap import bootstrap_intervals
from propensity.models.explain import global_importance
from propensity.models.holdout_figures import holdout_figures
from propensity.models.refit import Refit, refit_rows, refit_trained
from propensity.models.snapshot_plan import SnapshotPlan
from propensity.models.train import fit_candidates, split
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.evaluate import ground_truth_metrics
from propensity.pipeline.jobs.events import feature_set, load_events, model_feature_set
from propensity.pipeline.jobs.plan import describe, log_plan, make_plan, planned, settle
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


@dataclass(frozen=True)
class TrainingData:
    """What fitting starts from: stacked labelled snapshots and how they were built."""

    model: ModelConfig  # with its snapshot plan adapted to the span of the events
    fs: FeatureSet
    labels: dict[str, str]  # model feature name -> label
    frame: pd.DataFrame
    dates: list[dt.date]
    cutoff: dt.date
    events_display: str
    plan: SnapshotPlan
    sampling: dict[str, Any] | None = None  # how the rows were drawn (Spark), for the run's record
    feature_note: str = ""  # what the feature count is made of
    warnings: list[str] = field(default_factory=list)

    @property
    def snapshot_note(self) -> str | None:
        """Why the plan differs from the config, if it does."""
        return "; ".join(self.plan.notes) or None

    def plan_table(self) -> pd.DataFrame:
        """The plan's dates with their roles, estimated rows, population and positives."""
        return self.plan.table(self.frame)


@dataclass
class _Fitted:
    parts: Any  # the split: train / valid / test
    trained: Any  # every candidate and the chosen one
    fit_seconds: float
    refit: Refit | None = None  # the chosen model fitted again on every snapshot before the test


@dataclass
class _TestFigures:
    """The chosen model and the baselines on the test snapshot."""

    test: pd.DataFrame
    y: np.ndarray
    p: np.ndarray
    metrics: dict[str, float]
    baselines: dict[str, tuple[np.ndarray, bool]]
    buckets: pd.DataFrame
    deciles: pd.DataFrame
    importance: pd.DataFrame


def training_data(
    model_name: str, loaded: Events, config: ProjectConfig, as_of: dt.date | None
) -> TrainingData:
    """The model's stacked labelled snapshots on the events' engine (each date's profiles as the
    identity graph knew them then; on Spark a sample of at most ``training.max_training_rows``
    rows, the same share of each label)."""
    span = loaded.span()
    if span is None:
        raise UserError("no events to train on")
    cutoff = as_of or span[1]
    model_cfg = load_model_config(model_name, config)
    plan = make_plan(model_cfg, loaded, cutoff)
    model_cfg = planned(model_cfg, plan)
    fs = feature_set(loaded, config, before=plan.dates[0])
    snapshots = model_cfg.training.snapshots
    dates = snapshot_dates(cutoff, model_cfg.outcome.horizon_days, snapshots.count, snapshots.spacing_days)
    fs = model_feature_set(fs, loaded, model_cfg.outcome, dates, model_cfg.features.population_outcome_rate)
    # A bad rule or feature name fails before any heavy work.
    population_rule(model_cfg, fs)
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    rows = loaded.training_rows(fs, model_cfg, cutoff)
    first_date = plan.dates[0]
    plan = settle(plan, rows.frame, model_cfg)
    window = windows_before_data(config.features.windows_days, span[0], plan.dates[0])
    return TrainingData(
        model_cfg,
        fs,
        labels,
        rows.frame,
        rows.dates,
        cutoff,
        loaded.inputs.display,
        plan,
        rows.sampling,
        feature_count_note(fs, len(labels), categories_source(config.features.categories, first_date)),
        [f"earliest training snapshot: {window}"] if window else [],
    )


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
    loaded = load_events(events, config)
    data = training_data(model_name, loaded, config, as_of)
    if on_plan is not None:
        on_plan(describe(data.plan, data.plan_table()), data.plan_table())
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
        "plan": describe(data.plan, data.plan_table()),
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


def fit(data: TrainingData, started: float) -> _Fitted:
    """Split by snapshot and fit every candidate; validation chooses one, which is then fitted
    again on every snapshot before the test snapshot (``training.refit``)."""
    training = data.model.training
    try:
        parts = split(data.frame, training, data.plan.validation)
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
    return _Fitted(parts, trained, time.perf_counter() - started, done)


def evaluate_on_test(
    data: TrainingData,
    fitted: _Fitted,
    ground_truth: Callable[[pd.DataFrame, np.ndarray], dict[str, float]] | None,
) -> _TestFigures:
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
    importance = global_importance(model, test.sample(min(len(test), 20_000), random_state=0))
    return _TestFigures(test, y, p, results, scored_baselines, buckets, ev.decile_table(y, p), importance)


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
    champion = _champion_on(client, data.model, figures)
    mlflow.set_experiment(data.model.name)
    with mlflow.start_run(run_name=f"train {data.model.name} until {data.cutoff}") as run:
        _log_training_run(data, config, fitted, figures, champion)
        model_uri, version = _register(client, data, fitted, figures.test)
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


def _log_training_run(
    data: TrainingData, config: ProjectConfig, fitted: _Fitted, figures: _TestFigures, champion
) -> None:
    """The train run's tags, parameters, metrics, candidates, configs and tables."""
    model_cfg, trained, training = data.model, fitted.trained, data.model.training
    names = list(data.labels)
    mlflow.set_tags(
        {
            "git_commit": tracking.git_commit() or "unknown",
            "events": data.events_display,
            "step": "train",
            "trained_until": str(data.cutoff),
            "model_family": trained.chosen.family,
            "selection_reason": trained.reason,
            **({"snapshot_plan": data.snapshot_note} if data.snapshot_note else {}),
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
            "snapshots": len(data.dates),
            "snapshot_spacing_days": training.snapshots.spacing_days,
            "test_as_of": str(data.dates[-1]),
            "features": len(names),
            "train_rows": len(fitted.parts.train),
            "test_rows": len(figures.test),
            "selection_metric": training.selection_metric,
            "candidates": ",".join(training.candidates),
        }
    )
    mlflow.log_metrics({**figures.metrics, "fit_seconds": fitted.fit_seconds})
    log_plan(data.plan, data.plan_table())
    if fitted.refit is not None:
        mlflow.log_params({f"refit_{k}": v for k, v in fitted.refit.record().items() if k != "snapshots"})
        mlflow.log_metric("refit_seconds", fitted.refit.seconds)
    if data.sampling:
        mlflow.log_params(data.sampling)
    _log_candidates(trained)
    if champion is not None:
        # What `promote` compares against: the champion on this very test snapshot.
        mlflow.set_tag("compared_champion_version", champion[0])
        mlflow.log_metrics(
            {k if "_minus_champion_" in k else f"champion_{k}": v for k, v in champion[1].items()}
        )
    summary = {
        "rows": fitted.parts.summary(),
        "snapshots": [str(d) for d in data.dates],
        "snapshot_plan": data.snapshot_note or "as configured",
        "validation_as_of": str(data.plan.validation),
        "refit": fitted.refit.record() if fitted.refit is not None else None,
        "features": len(names),
        "model_family": trained.chosen.family,
        "selection_reason": trained.reason,
        "trained_until": str(data.cutoff),
    }
    mlflow.log_dict(model_cfg.model_dump(mode="json"), "config/model.json")
    mlflow.log_dict(config.model_dump(mode="json"), "config/project.json")
    mlflow.log_dict({"features": [{"name": n, "label": data.labels[n]} for n in names]}, "features.json")
    mlflow.log_dict(summary, "training_data.json")
    mlflow.log_table(figures.buckets, "evaluation/buckets.json")
    mlflow.log_table(figures.deciles, "evaluation/deciles.json")
    mlflow.log_table(figures.importance, "evaluation/feature_importance.json")
    _log_plots(figures)


def _log_plots(figures: _TestFigures) -> None:
    """Gains against the baselines, lift, calibration, score distribution, importance."""
    y, p, baseline_scores = figures.y, figures.p, figures.baselines
    curves = {"model": p, "logistic regression (RFM)": baseline_scores["logreg"][0]}
    curves["recency"] = baseline_scores["recency"][0]
    if "bgnbd" in baseline_scores:
        curves["BG/NBD"] = baseline_scores["bgnbd"][0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for path in (
            plots.plot_gains(y, curves, out / "gains.png"),
            plots.plot_lift(figures.deciles, out / "lift_by_decile.png"),
            plots.plot_calibration(y, p, out / "calibration.png"),
            plots.plot_distribution(y, p, out / "score_distribution.png"),
            plots.plot_importance(figures.importance, out / "feature_importance.png"),
        ):
            mlflow.log_artifact(str(path), "plots")


def _register(client, data: TrainingData, fitted: _Fitted, test: pd.DataFrame) -> tuple[str, str]:
    """Log the model to the registry as the challenger, tagged with how it was trained."""
    name, trained = data.model.name, fitted.trained
    model_uri, version = tracking.log_model(trained.model, test, name)
    client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    client.set_model_version_tag(name, version, "trained_until", str(data.cutoff))
    client.set_model_version_tag(name, version, "model_family", trained.chosen.family)
    client.set_model_version_tag(name, version, "selection_reason", trained.reason)
    return model_uri, version


def _champion_on(client, model_cfg: ModelConfig, figures: _TestFigures) -> tuple[str, dict] | None:
    """The current champion on this test snapshot, if there is one that fits it: its version and
    metrics, with the paired bootstrap intervals of the challenger minus the champion
    (``test_<m>_minus_champion_ci_low`` / ``_ci_high``), which `promote` reports."""
    try:
        champion, mv = tracking.load_propensity_model(client, model_cfg.name, alias=tracking.CHAMPION)
        old = champion.predict_proba(figures.test)
    except UserError:
        # No champion yet, or one built on features this table lacks (other categories).
        return None
    training = model_cfg.training
    scores = {"model": figures.p, "champion": old}
    paired = bootstrap_intervals(
        figures.y, scores, set(scores), training.bootstrap_resamples, training.seed, reference="model"
    )["model-champion"]
    out = ev.metrics(figures.y, old)
    for metric, (low, high) in paired.items():
        out[f"test_{metric}_minus_champion_ci_low"], out[f"test_{metric}_minus_champion_ci_high"] = low, high
    return str(mv.version), out
