"""The monitor job: a model's score partition and features at an as-of against its test
snapshot -> drift report, MLflow run, alert (:mod:`propensity.models.monitoring`).

DuckDB only, whatever the config's engine: the reference and current frames are read into
memory to compare distributions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from propensity.core.config import MonitorConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.activation import segments as segments_mod
from propensity.features.build.population import population_rule
from propensity.features.duckdb import DuckDBEngine
from propensity.features.sql import sql_string
from propensity.models import tracking
from propensity.models.monitoring import (
    SCORE,
    BaseRate,
    MonitorReport,
    base_rate_shift,
    monitor,
    top_features,
    write_report,
)
from propensity.pipeline.jobs.config_files import load_model_config, load_monitor_config
from propensity.pipeline.jobs.events import feature_set, load_events, model_vocabulary


@dataclass
class MonitorResult:
    """A drift report for one model at one as-of; ``alert`` when any PSI reached the threshold."""

    model: str
    version: str | None
    as_of: dt.date
    reference_as_of: dt.date
    report: MonitorReport
    report_path: Path
    plot_path: Path
    run_id: str

    @property
    def alert(self) -> bool:
        return self.report.alert


def _scored_version(con, files: list[str], model: str, as_of: dt.date) -> str:
    listed = ", ".join(sql_string(f) for f in files)
    versions = [
        str(r[0])
        for r in con.execute(
            f"SELECT DISTINCT model_version FROM read_parquet([{listed}]) ORDER BY 1"
        ).fetchall()
    ]
    if len(versions) != 1:
        raise UserError(
            f"the scores of '{model}' at {as_of} come from {len(versions)} model versions "
            f"({', '.join(versions) or 'none'}); re-score the partition with one version"
        )
    return versions[0]


def monitor_model(
    model: str,
    events: str | Path,
    scores_dir: str | Path,
    as_of: dt.date,
    config: ProjectConfig,
    out_dir: str | Path,
    monitor_config: MonitorConfig | None = None,
) -> MonitorResult:
    """Drift of ``model``'s scores at ``as_of`` (and of its top features) against its reference.

    Reference: the model's test snapshot date (``metadata["test_as_of"]``) rebuilt from the
    events for the model's population and scored by the very version that wrote the score
    partition; the distribution the model was validated on. Current: the score partition at
    ``as_of`` with that date's features of the scored profiles. Writes the report to
    ``out_dir`` and logs it to an MLflow run in the model's experiment.
    """
    monitor_cfg = monitor_config or load_monitor_config()
    model_cfg = load_model_config(model, config)
    files = segments_mod.score_partition(scores_dir, model_cfg.name, as_of, f"monitor {model_cfg.name}")
    loaded = load_events(events, config, engine=DuckDBEngine(config))
    con = loaded.con
    version = _scored_version(con, files, model_cfg.name, as_of)
    client = tracking.configure(config)
    estimator, _ = tracking.load_propensity_model(client, model_cfg.name, version=version)
    reference_as_of = dt.date.fromisoformat(estimator.metadata["test_as_of"])
    fs = feature_set(loaded, config, before=reference_as_of, **model_vocabulary(estimator.metadata))
    reference = _reference(loaded, fs, model_cfg, estimator, reference_as_of)
    current = _current(loaded, fs, estimator, monitor_cfg, files, as_of, model_cfg.name)
    base_rate = _base_rate(loaded, fs, model_cfg, as_of, reference_as_of)
    report = monitor(
        estimator,
        reference,
        current,
        monitor_cfg,
        str(as_of),
        str(reference_as_of),
        version=version,
        base_rate=base_rate,
    )
    report_path, plot_path = write_report(report, reference, current, out_dir)
    run_id = _log_monitor_run(
        model_cfg.name, version, as_of, reference_as_of, report, (report_path, plot_path)
    )
    return MonitorResult(
        model=model_cfg.name,
        version=version,
        as_of=as_of,
        reference_as_of=reference_as_of,
        report=report,
        report_path=report_path,
        plot_path=plot_path,
        run_id=run_id,
    )


def _reference(loaded, fs, model_cfg, estimator, reference_as_of: dt.date) -> pd.DataFrame:
    """The model's population at its test snapshot date, scored by the monitored version."""
    where = population_rule(model_cfg, fs).sql("duckdb", column_prefix="f")
    reference = loaded.frame(loaded.snapshot(fs, reference_as_of, where=where))
    if reference.empty:
        raise UserError(f"model '{model_cfg.name}': no profiles in its population at {reference_as_of}")
    reference[SCORE] = estimator.predict_proba(reference)
    return reference


def _base_rate(loaded, fs, model_cfg, as_of: dt.date, reference_as_of: dt.date) -> BaseRate | None:
    """The outcome rate of the latest snapshot labelled by ``as_of`` (its horizon ended by then
    and by the end of the data) against the test snapshot's; None when that snapshot is not
    after the test snapshot (nothing newer is known yet)."""
    cutoff = min(as_of, loaded.data_end())
    labelled_as_of = cutoff - dt.timedelta(days=model_cfg.outcome.horizon_days)
    if labelled_as_of <= reference_as_of:
        return None
    labels = {}
    for day in (labelled_as_of, reference_as_of):
        relation, labelled = loaded.population_snapshot(fs, model_cfg, day, cutoff)
        frame = loaded.frame(relation) if labelled else pd.DataFrame()
        if frame.empty:
            return None
        labels[day] = frame["label"].to_numpy()
    return base_rate_shift(
        str(labelled_as_of), labels[labelled_as_of], str(reference_as_of), labels[reference_as_of]
    )


def _current(loaded, fs, estimator, monitor_cfg, files: list[str], as_of: dt.date, name: str) -> pd.DataFrame:
    """The scored profiles at ``as_of`` with their probability and the watched features."""
    watched = [feature for feature, _ in top_features(estimator, monitor_cfg.top_features)]
    chosen = fs.select(include=[n for n in watched if n in set(fs.names(False))] or ["is_known"])
    listed = ", ".join(sql_string(f) for f in files)
    current = loaded.frame(f"""
        SELECT f.*, s.probability AS {SCORE}
        FROM ({loaded.snapshot(chosen, as_of)}) f
        JOIN read_parquet([{listed}]) s ON s.profile_id = f.profile_id
        ORDER BY f.profile_id
    """)
    if current.empty:
        raise UserError(f"none of the profiles scored by '{name}' at {as_of} has features then")
    return current


def _log_monitor_run(
    name: str, version: str, as_of: dt.date, reference_as_of: dt.date, report: MonitorReport, paths
) -> str:
    """The monitor run in the model's MLflow experiment: PSIs, alert, report and plot."""
    mlflow.set_experiment(name)
    with mlflow.start_run(run_name=f"monitor v{version} at {as_of}") as run:
        mlflow.set_tags(
            {
                "step": "monitor",
                "monitored_version": version,
                "as_of": str(as_of),
                "reference_as_of": str(reference_as_of),
                "alert": str(report.alert).lower(),
                "git_commit": tracking.git_commit() or "unknown",
            }
        )
        mlflow.log_metrics(
            {
                "psi_score": report.score.psi,
                **{f"psi_{d.name}": d.psi for d in report.features},
                "alert": float(report.alert),
                **_base_rate_metrics(report.base_rate),
                "reference_rows": float(report.reference_rows),
                "current_rows": float(report.current_rows),
            }
        )
        for path in paths:
            mlflow.log_artifact(str(path), "monitoring")
        return run.info.run_id


def _base_rate_metrics(base_rate: BaseRate | None) -> dict[str, float]:
    """The base rate's figures for the monitor run (nothing when no newer snapshot is labelled)."""
    if base_rate is None:
        return {}
    return {
        "base_rate": base_rate.rate,
        "base_rate_ci_low": base_rate.rate_low,
        "base_rate_ci_high": base_rate.rate_high,
        "base_rate_positives": float(base_rate.positives),
        "reference_base_rate": base_rate.reference_rate,
        "base_rate_difference_ci_low": base_rate.difference_low,
        "base_rate_difference_ci_high": base_rate.difference_high,
        "base_rate_moved": float(base_rate.moved),
    }
