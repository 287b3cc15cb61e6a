"""The report job: one HTML page per model version, from its MLflow run and its score partitions.

What it shows: how good the model is against its baselines (with intervals), whether its
probabilities are honest (calibration, predicted vs actual per bucket), what drives the
scores (global importance, top factors per bucket), the latest score distribution and the
scoring history (PSI of each run's scores against the model's reference).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path
from propensity.features.sql import sql_string
from propensity.models import tracking
from propensity.models.evaluate import scores_from_reference
from propensity.models.monitoring import psi
from propensity.models.report import (
    Figure,
    ReportSection,
    history_figure,
    render_report,
    score_distribution_figure,
)
from propensity.models.scoring import bucket_thresholds

METRIC_ROWS = (
    ("test_auc", "AUC"),
    ("test_average_precision", "average precision"),
    ("test_brier", "Brier score (lower is better)"),
    ("test_log_loss", "log loss (lower is better)"),
    ("test_ece", "expected calibration error"),
    ("test_lift_at_10", "lift in the top 10 %"),
)
PLOTS = {
    "gains.png": ("Gains vs baselines", "Share of outcomes captured when targeting the top-scored profiles."),
    "lift_by_decile.png": ("Lift by decile", "Outcome rate of each score decile over the base rate."),
    "calibration.png": ("Calibration", "Predicted probability against the observed rate."),
    "feature_importance.png": ("Global importance", "Mean |SHAP| (log-odds) on the test snapshot."),
}


@dataclass(frozen=True)
class ReportResult:
    """A written report and what it covers."""

    path: Path
    model: str
    version: str
    figures: int
    score_runs: int  # score partitions of this model in the history
    run_id: str  # the training run the report was logged to


def _logged_table(root: Path, name: str) -> pd.DataFrame | None:
    path = root / "evaluation" / name
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


def _metrics_table(metrics: dict[str, float]) -> pd.DataFrame:
    rows = []
    for key, label in METRIC_ROWS:
        if key not in metrics:
            continue
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        suffix = key.removeprefix("test_")
        rows.append(
            {
                "metric": label,
                "model": metrics[key],
                "95% interval": f"{low:.4f} - {high:.4f}" if low is not None and high is not None else "",
                "logistic RFM": metrics.get(f"baseline_logreg_{suffix}", np.nan),
                "recency": metrics.get(f"baseline_recency_{suffix}", np.nan),
                "oracle": metrics.get("oracle_auc", np.nan) if key == "test_auc" else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _partitions(scores_dir: Path, model: str) -> list[tuple[dt.date, Path]]:
    root = scores_dir / f"model={model}"
    found = []
    for directory in sorted(root.glob("as_of=*")) if root.is_dir() else []:
        files = sorted(directory.glob("*.parquet"))
        if files:
            found.append((dt.date.fromisoformat(directory.name.removeprefix("as_of=")), directory))
    return found


def _history(partitions: list[tuple[dt.date, Path]], reference_scores: np.ndarray) -> pd.DataFrame:
    con = duckdb.connect()
    rows = []
    for as_of, directory in partitions:
        source = f"read_parquet({sql_string(str(directory / '*.parquet'))})"
        frame = con.execute(f"SELECT score, bucket, model_version FROM {source}").df()
        shares = frame["bucket"].value_counts(normalize=True)
        rows.append(
            {
                "as_of": str(as_of),
                "versions": ", ".join(sorted(frame["model_version"].astype(str).unique())),
                "profiles": len(frame),
                "high": shares.get("high", 0.0),
                "medium": shares.get("medium", 0.0),
                "low": shares.get("low", 0.0),
                "psi": psi(reference_scores, frame["score"].to_numpy(dtype=float), bins=10),
            }
        )
    return pd.DataFrame(rows)


def _factors_by_bucket(directory: Path, top: int = 5) -> pd.DataFrame:
    source = f"read_parquet({sql_string(str(directory / '*.parquet'))})"
    return (
        duckdb.connect()
        .execute(f"""
        WITH f AS (SELECT bucket, unnest(factors[1:3]) AS factor FROM {source})
        SELECT bucket, factor.label AS factor, count(*) AS profiles,
               avg(factor.impact) AS mean_impact
        FROM f GROUP BY bucket, factor.label
        QUALIFY row_number() OVER (PARTITION BY bucket ORDER BY count(*) DESC, factor.label) <= {top}
        ORDER BY CASE bucket WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, profiles DESC
    """)
        .df()
    )


def _overall_calibration(metrics: dict[str, float]) -> str:
    """``: 0.0412 predicted on average, 0.0398 [0.0371, 0.0427] happened``, when logged."""
    keys = ("test_predicted_rate", "test_base_rate", "test_base_rate_ci_low", "test_base_rate_ci_high")
    if any(k not in metrics for k in keys):
        return ""
    predicted, actual, low, high = (metrics[k] for k in keys)
    return f": {predicted:.4f} predicted on average, {actual:.4f} [{low:.4f}, {high:.4f}] happened"


def _quality_sections(run, figures: dict[str, Figure], buckets: pd.DataFrame | None) -> list[ReportSection]:
    """How good the model is on its test snapshot, and how honest its probabilities are."""
    metrics = run.data.metrics
    return [
        ReportSection(
            "How good is it?",
            f"Test snapshot {run.data.params.get('test_as_of', '?')}: "
            f"{int(metrics.get('test_positives', 0)) or 'n/a'} positives among "
            f"{run.data.params.get('test_rows', '?')} profiles never seen in training.",
            figures=[figures[n] for n in ("gains.png", "lift_by_decile.png") if n in figures],
            tables=[("Model vs baselines", _metrics_table(metrics))],
        ),
        ReportSection(
            "Are the probabilities honest?",
            "Predicted against actual rates on the test snapshot, overall and per bucket"
            + _overall_calibration(metrics)
            + " (per bucket: the actual rate's 95 % Wilson interval, and whether the prediction is in it).",
            figures=[figures[n] for n in ("calibration.png",) if n in figures],
            tables=[("Predicted vs actual per bucket", buckets)] if buckets is not None else [],
        ),
    ]


def _drivers_section(
    figures: dict[str, Figure], importance: pd.DataFrame | None, partitions
) -> ReportSection:
    """Global importance, and the latest run's most frequent top factors per bucket."""
    drivers = ReportSection(
        "What drives the score?",
        "Global importance on the test snapshot, and the factors most often among the top three "
        "of each bucket's profiles in the latest scoring run.",
        figures=[figures[n] for n in ("feature_importance.png",) if n in figures],
    )
    if importance is not None:
        drivers.tables.append(("Top features", importance.head(15)))
    if partitions:
        drivers.tables.append(
            (f"Top factors per bucket ({partitions[-1][0]})", _factors_by_bucket(partitions[-1][1]))
        )
    return drivers


def _scores_section(model, partitions: list[tuple[dt.date, Path]], scores_root: Path) -> ReportSection:
    """The latest run's score distribution and every run's stability against the reference."""
    if not partitions:
        return ReportSection("Scores and their history", f"No score partitions under {scores_root} yet.")
    reference = np.asarray(model.metadata["reference_probabilities"], dtype=float)
    reference_scores = scores_from_reference(reference, reference).astype(float)
    latest_as_of, latest = partitions[-1]
    scores = (
        duckdb.connect()
        .execute(f"SELECT score FROM read_parquet({sql_string(str(latest / '*.parquet'))})")
        .fetchnumpy()["score"]
    )
    history = _history(partitions, reference_scores)
    return ReportSection(
        "Scores and their history",
        "Score distribution of the latest run and stability of every run against the reference.",
        figures=[
            score_distribution_figure(scores, bucket_thresholds(model), f"Scores at {latest_as_of}"),
            history_figure(history),
        ],
        tables=[("Scoring runs", history)],
    )


def write_report(
    model_name: str,
    config: ProjectConfig,
    out: str | Path | None = None,
    alias: str | None = None,
    version: str | None = None,
    scores_dir: str | Path | None = None,
) -> ReportResult:
    """Write ``OUT`` (default ``WORK_DIR/reports/<model>_v<version>.html``) and log it to MLflow."""
    if version and alias:
        raise UserError("give --version or --alias, not both")
    client = tracking.configure(config)
    model, mv = tracking.load_propensity_model(client, model_name, version=version, alias=alias)
    if not mv.run_id:
        raise UserError(f"model '{model_name}' v{mv.version} has no training run to report on")
    run = client.get_run(mv.run_id)
    scores_root = Path(scores_dir) if scores_dir is not None else Path(config.work_dir) / "scores"
    target = (
        Path(out)
        if out is not None
        else Path(config.work_dir) / "reports" / f"{model_name}_v{mv.version}.html"
    )
    partitions = _partitions(scores_root, model_name)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, dst_path=tmp))
        figures = {
            name: Figure(PLOTS[name][0], path.read_bytes(), PLOTS[name][1])
            for name, path in ((name, root / "plots" / name) for name in PLOTS)
            if path.is_file()
        }
        buckets = _logged_table(root, "buckets.json")
        importance = _logged_table(root, "feature_importance.json")
    sections = [
        *_quality_sections(run, figures, buckets),
        _drivers_section(figures, importance, partitions),
        _scores_section(model, partitions, scores_root),
    ]
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    html_text = render_report(
        f"{model_name} v{mv.version}: propensity model report",
        f"population: {model.metadata.get('population', '')} | "
        f"trained until {model.metadata.get('trained_until', '?')} | generated {generated}",
        sections,
    )
    with atomic_path(target) as tmp_path:
        tmp_path.write_text(html_text, encoding="utf-8")
    client.log_artifact(mv.run_id, str(target), "report")
    return ReportResult(
        path=target,
        model=model_name,
        version=str(mv.version),
        figures=sum(len(s.figures) for s in sections),
        score_runs=len(partitions),
        run_id=mv.run_id,
    )
