"""The segments, export and monitor jobs: files in, files out, typed results back.

* :func:`qualify_segments`: events + score partitions + segments.yaml -> memberships at an
  as-of (``features.segments``);
* :func:`export_segments`: memberships + destinations.yaml -> one file per destination and
  segment, identities filtered and governance checked (``features.destinations``);
* :func:`monitor_model`: a model's score partition and features at an as-of against its test
  snapshot -> drift report, MLflow run, alert (``models.monitoring``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from propensity.core.config import MonitorConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.activation import destinations as destinations_mod
from propensity.features.activation import membership_store
from propensity.features.activation import segments as segments_mod
from propensity.features.build.event_queries import data_end
from propensity.features.build.labels import population_rule
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import connect
from propensity.features.sql import sql_string
from propensity.models import tracking
from propensity.models.monitoring import SCORE, MonitorReport, monitor, top_features, write_report
from propensity.pipeline.jobs.config_files import (
    load_destinations,
    load_model_config,
    load_monitor_config,
    load_segments,
)
from propensity.pipeline.jobs.features import feature_set
from propensity.pipeline.jobs.ingest import load_events


@dataclass
class SegmentsResult:
    """One as-of's qualification: sizes and transitions per segment."""

    as_of: dt.date
    out: Path
    previous_as_of: dt.date | None
    segments: list[segments_mod.SegmentCounts]
    rows: int
    profiles: int
    # Later dates whose stored statuses a back-fill made stale: re-run them in date order.
    stale_later: list[dt.date] = field(default_factory=list)


def _snapshot(fs, as_of: dt.date, con, sources, where: str | None = None) -> str:
    """The feature snapshot at ``as_of`` over the events and profiles as of that date."""
    return snapshot_sql(fs, as_of, con, events=sources.events, profiles=sources.profiles, where=where)


def known_models(config: ProjectConfig, scores_dir: str | Path) -> list[str]:
    """Models a rule may name: configured ones (configs/models) and ones with score partitions."""
    configured = {p.stem for p in Path(config.models_dir).glob("*.yaml")}
    scores = Path(scores_dir)
    scored = (
        {d.name.split("=", 1)[1] for d in scores.glob("model=*") if d.is_dir()} if scores.is_dir() else set()
    )
    return sorted(configured | scored)


def qualify_segments(
    events: str | Path,
    scores_dir: str | Path,
    as_of: dt.date | None,
    segments_path: str | Path,
    out_dir: str | Path,
    config: ProjectConfig,
) -> SegmentsResult:
    """Qualify the segments of ``segments_path`` at ``as_of`` (default: the day after the data).

    Every rule is checked (columns, kinds, models, score partitions) before anything runs;
    then one query computes all memberships with their statuses against the previous as-of
    in ``out_dir`` and writes ``out_dir/as_of=<date>/`` atomically.
    """
    definitions = load_segments(segments_path)
    loaded = load_events(events, config)
    con = loaded.con
    as_of = as_of or data_end(con)
    # Profiles as they were at as_of (the identity graph before it), as the scores were built.
    sources = loaded.sources(as_of)
    fs = feature_set(con, config, before=as_of)
    kinds = segments_mod.column_kinds(con, _snapshot(fs, as_of, con, sources))
    segments = segments_mod.compile_segments(
        definitions.segments, kinds, known_models(config, scores_dir), str(segments_path)
    )
    scores = segments_mod.score_files(scores_dir, segments, as_of)
    # Only the features the rules read are computed; the snapshot's profiles do not depend on
    # which (every profile with events in the lookback). `is_known` keeps the list non-empty:
    # an empty include would select every feature.
    used = {c for s in segments for c in s.rule.columns if "." not in c} & set(fs.names(False))
    chosen = fs.select(include=sorted(used | {"is_known"}))
    outcome = segments_mod.qualify(
        con,
        segments,
        _snapshot(chosen, as_of, con, sources),
        scores,
        out_dir,
        as_of,
        identity_namespaces=config.identity.namespaces,
        identity_map=sources.identity_map,
        profiles=sources.profiles,
    )
    return SegmentsResult(
        as_of=outcome.as_of,
        out=outcome.directory,
        previous_as_of=outcome.previous_as_of,
        segments=outcome.counts,
        rows=outcome.rows,
        profiles=outcome.profiles,
        stale_later=outcome.stale_later,
    )


@dataclass
class ExportResult:
    """What each destination received at one as-of."""

    as_of: dt.date
    out: Path
    destinations: list[destinations_mod.DestinationExport]


def model_actions(models: set[str], config: ProjectConfig) -> dict[str, str | None]:
    """Each model's governance marketing action; None for a model without a config."""
    actions: dict[str, str | None] = {}
    for model in sorted(models):
        try:
            actions[model] = load_model_config(model, config).governance.marketing_action
        except UserError:
            actions[model] = None
    return actions


def export_segments(
    memberships_dir: str | Path,
    as_of: dt.date | None,
    destinations_path: str | Path,
    export_dir: str | Path,
    config: ProjectConfig,
) -> ExportResult:
    """Export the memberships at ``as_of`` (default: the latest) to every destination.

    All destinations are checked first (segments present, identity namespaces known,
    governance of the models behind each segment); any problem stops the export before a
    file is written.
    """
    destinations = load_destinations(destinations_path).destinations
    dates = membership_store.membership_dates(memberships_dir)
    if as_of is None:
        if not dates:
            raise UserError(f"{memberships_dir}: no memberships; run `propensity segments` first")
        as_of = dates[-1]
    summary = membership_store.read_summary(memberships_dir, as_of)
    segment_models = {name: tuple(s.get("models", ())) for name, s in summary["segments"].items()}
    wanted = {seg for d in destinations for seg in d.segments}
    actions = model_actions({m for seg in wanted for m in segment_models.get(seg, ())}, config)
    namespaces = destinations_mod.recorded_namespaces(memberships_dir, as_of, summary)
    destinations_mod.check_destinations(destinations, segment_models, actions, namespaces, as_of)
    con = connect(config.engine)
    membership_store.refuse_stale(con, memberships_dir, as_of)
    exports = [
        destinations_mod.export_destination(con, memberships_dir, as_of, d, export_dir) for d in destinations
    ]
    return ExportResult(as_of=as_of, out=Path(export_dir), destinations=exports)


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
    loaded = load_events(events, config)
    con = loaded.con
    version = _scored_version(con, files, model_cfg.name, as_of)
    client = tracking.configure(config)
    estimator, _ = tracking.load_propensity_model(client, model_cfg.name, version=version)
    reference_as_of = dt.date.fromisoformat(estimator.metadata["test_as_of"])
    fs = feature_set(con, config, before=reference_as_of, categories=estimator.metadata.get("categories"))
    where = population_rule(model_cfg, fs).sql("duckdb", column_prefix="f")
    reference = con.execute(
        _snapshot(fs, reference_as_of, con, loaded.sources(reference_as_of), where=where)
    ).df()
    if reference.empty:
        raise UserError(f"model '{model_cfg.name}': no profiles in its population at {reference_as_of}")
    reference[SCORE] = estimator.predict_proba(reference)
    watched = [name for name, _ in top_features(estimator, monitor_cfg.top_features)]
    chosen = fs.select(include=[n for n in watched if n in set(fs.names(False))] or ["is_known"])
    listed = ", ".join(sql_string(f) for f in files)
    current = con.execute(f"""
        SELECT f.*, s.probability AS {SCORE}
        FROM ({_snapshot(chosen, as_of, con, loaded.sources(as_of))}) f
        JOIN read_parquet([{listed}]) s ON s.profile_id = f.profile_id
        ORDER BY f.profile_id
    """).df()
    if current.empty:
        raise UserError(f"none of the profiles scored by '{model_cfg.name}' at {as_of} has features then")
    report = monitor(
        estimator, reference, current, monitor_cfg, str(as_of), str(reference_as_of), version=version
    )
    report_path, plot_path = write_report(report, reference, current, out_dir)
    mlflow.set_experiment(model_cfg.name)
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
                "reference_rows": float(report.reference_rows),
                "current_rows": float(report.current_rows),
            }
        )
        mlflow.log_artifact(str(report_path), "monitoring")
        mlflow.log_artifact(str(plot_path), "monitoring")
    return MonitorResult(
        model=model_cfg.name,
        version=version,
        as_of=as_of,
        reference_as_of=reference_as_of,
        report=report,
        report_path=report_path,
        plot_path=plot_path,
        run_id=run.info.run_id,
    )
