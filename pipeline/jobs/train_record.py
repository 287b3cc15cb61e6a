"""The train run's record: its MLflow tags, parameters, metrics, tables and plots, one child
run per candidate, the champion measured on the same test snapshot, and the challenger
registered."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.models import evaluate as ev
from propensity.models import plots, tracking
from propensity.models.bootstrap import bootstrap_intervals
from propensity.pipeline.jobs.plan import log_plan
from propensity.pipeline.jobs.training_data import Fitted, TestFigures, TrainingData


def log_training_run(
    data: TrainingData, config: ProjectConfig, fitted: Fitted, figures: TestFigures, champion
) -> None:
    """The train run's tags, parameters, metrics, candidates, configs and tables."""
    model_cfg, trained = data.model, fitted.trained
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
    mlflow.log_params(_run_params(data, fitted, figures))
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
    mlflow.log_dict(model_cfg.model_dump(mode="json"), "config/model.json")
    mlflow.log_dict(config.model_dump(mode="json"), "config/project.json")
    mlflow.log_dict({"features": [{"name": n, "label": data.labels[n]} for n in names]}, "features.json")
    mlflow.log_dict(_training_summary(data, fitted), "training_data.json")
    mlflow.log_table(figures.buckets, "evaluation/buckets.json")
    mlflow.log_table(figures.deciles, "evaluation/deciles.json")
    mlflow.log_table(figures.importance, "evaluation/feature_importance.json")
    _log_plots(figures)


def _run_params(data: TrainingData, fitted: Fitted, figures: TestFigures) -> dict[str, Any]:
    """The train run's parameters: the chosen candidate's own (prefixed by its family), the
    model's setup and the rows of the split."""
    trained, training = fitted.trained, data.model.training
    chosen_params = {k: v for k, v in trained.chosen.params.items() if not isinstance(v, dict)}
    return {
        **{f"{trained.chosen.family}_{k}": v for k, v in chosen_params.items()},
        "calibration": trained.chosen.params["calibration"],
        "seed": training.seed,
        "horizon_days": data.model.outcome.horizon_days,
        "population": data.model.population,
        "snapshots": len(data.dates),
        "snapshot_spacing_days": training.snapshots.spacing_days,
        "test_as_of": str(data.dates[-1]),
        "features": len(data.labels),
        "train_rows": len(fitted.parts.train),
        "test_rows": len(figures.test),
        "selection_metric": training.selection_metric,
        "candidates": ",".join(training.candidates),
    }


def _training_summary(data: TrainingData, fitted: Fitted) -> dict[str, Any]:
    """``training_data.json``: the rows of the split, the snapshots and the choice made."""
    return {
        "rows": fitted.parts.summary(),
        "snapshots": [str(d) for d in data.dates],
        "snapshot_plan": data.snapshot_note or "as configured",
        "validation_as_of": str(data.plan.validation),
        "refit": fitted.refit.record() if fitted.refit is not None else None,
        "features": len(data.labels),
        "model_family": fitted.trained.chosen.family,
        "selection_reason": fitted.trained.reason,
        "trained_until": str(data.cutoff),
    }


def _log_plots(figures: TestFigures) -> None:
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


def register_challenger(client, data: TrainingData, fitted: Fitted, test: pd.DataFrame) -> tuple[str, str]:
    """Log the model to the registry as the challenger, tagged with how it was trained."""
    name, trained = data.model.name, fitted.trained
    model_uri, version = tracking.log_model(trained.model, test, name)
    client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    client.set_model_version_tag(name, version, "trained_until", str(data.cutoff))
    client.set_model_version_tag(name, version, "model_family", trained.chosen.family)
    client.set_model_version_tag(name, version, "selection_reason", trained.reason)
    return model_uri, version


def champion_on(client, model_cfg: ModelConfig, figures: TestFigures) -> tuple[str, dict] | None:
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
