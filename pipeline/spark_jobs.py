"""The ingest, feature and training jobs on Apache Spark (``engine.name: spark``).

The same steps as :mod:`propensity.pipeline.ingest_jobs`, :mod:`.feature_jobs` and
:mod:`.model_jobs`, with the heavy work on a cluster: staging, stitching, feature tables
and labels are Spark DataFrames; outputs are Parquet directories on any Hadoop path
(local, ``hdfs://``, ``s3a://``, ``abfss://``). Training stays on one machine: Spark builds
the stacked, labelled snapshots and hands over a sample of at most
``training.max_training_rows`` rows (the same share of each label).

An ingest directory written here reads in the DuckDB jobs and the other way round.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features import spark_features as sf
from propensity.features import spark_identity
from propensity.features.registry import build_registry, model_features
from propensity.features.spark_engine import (
    SparkInput,
    atomic_output,
    is_remote,
    read_text,
    resolve_spark_input,
    spark_session,
    write_parquet,
    write_text,
)
from propensity.features.spark_ingest import stage_events, stage_profiles
from propensity.features.staging import bad_rows_message
from propensity.pipeline.config_files import load_model_config
from propensity.pipeline.feature_jobs import FeatureTable
from propensity.pipeline.ingest_jobs import INGEST_FORMAT, IngestSummary, OnBadRows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from propensity.features.identity import StitchResult
    from propensity.features.spark_ingest import SparkStaged
    from propensity.pipeline.model_jobs import TrainResult


@dataclass
class SparkEvents:
    """Events on Spark: the temp views ``events`` and ``profiles`` and where they came from."""

    spark: SparkSession
    inputs: SparkInput
    events: DataFrame
    profiles: DataFrame
    identity_map: DataFrame
    manifest: dict[str, Any] | None = None


@dataclass
class _Stitched:
    staged: SparkStaged
    stitch: StitchResult
    events: DataFrame  # stitched, with _source_file / _source_row
    identity_map: DataFrame
    profiles: DataFrame


def _stage_and_stitch(
    spark: SparkSession,
    inputs: SparkInput,
    config: ProjectConfig,
    on_bad_rows: OnBadRows,
    as_of: dt.date | None,
    profiles: str | None,
) -> _Stitched:
    identity = config.identity
    staged = stage_events(spark, inputs, identity, as_of, config.ingest.max_reported_rows)
    if staged.summary.rows_bad and on_bad_rows == "fail":
        raise UserError(bad_rows_message(inputs.display, staged.summary))
    attributes = namespaces = None
    if profiles is not None:
        attributes, namespaces = stage_profiles(spark, profiles, profiles, identity)
    links = spark_identity.identity_links(staged.clean, identity, attributes, namespaces)
    identity_map, stitch = spark_identity.stitch(spark, links, identity)
    events = spark_identity.attribute_events(staged.clean, identity_map, identity).persist()
    profile_table = spark_identity.build_profiles(identity_map, events, identity, attributes, namespaces)
    return _Stitched(staged, stitch, events, identity_map, profile_table)


def _summarise(stitched: _Stitched, quarantined: bool) -> IngestSummary:
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention

    events, staged = stitched.events, stitched.staged.summary

    def ordered(column) -> dict[str, int]:
        rows = events.groupBy(column.alias("key")).count().orderBy(F.desc("count"), "key").collect()
        return {row["key"]: int(row["count"]) for row in rows}

    span = events.agg(F.min("timestamp"), F.max("timestamp")).first()
    identities = stitched.identity_map.groupBy("namespace").count().orderBy("namespace").collect()
    return IngestSummary(
        rows_in=staged.rows_in,
        rows_written=staged.rows_clean,
        duplicates_dropped=staged.rows_duplicate,
        rows_quarantined=staged.rows_bad if quarantined else 0,
        bad_rows=staged.rows_bad,
        bad_rows_by_reason=staged.bad_by_reason,
        first_event=str(span[0]) if span[0] else None,
        last_event=str(span[1]) if span[1] else None,
        events_by_type=ordered(F.col("event_type")),
        events_by_channel=ordered(F.coalesce(F.col("channel"), F.lit("(none)"))),
        identities_by_namespace={row["namespace"]: int(row["count"]) for row in identities},
        profiles=stitched.stitch.profiles,
        known_profiles=stitched.stitch.known_profiles,
        identity_collapses=[asdict(c) for c in stitched.stitch.collapses],
    )


def validate(
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    profiles: str | Path | None = None,
) -> IngestSummary:
    """Dry run of :func:`ingest` on Spark: the summary, bad rows by reason; writes nothing."""
    spark = spark_session(config.engine)
    inputs = resolve_spark_input(spark, events)
    profiles_path = str(profiles) if profiles else inputs.profiles
    return _summarise(_stage_and_stitch(spark, inputs, config, "quarantine", as_of, profiles_path), True)


def ingest(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    profiles: str | Path | None = None,
    on_bad_rows: OnBadRows | None = None,
    as_of: dt.date | None = None,
) -> IngestSummary:
    """Validate, hash, de-duplicate and stitch events on Spark (``ingest_jobs.ingest``).

    ``out`` (any Hadoop path) receives Parquet directories ``events.parquet``,
    ``identity_map.parquet``, ``profiles.parquet``, ``quarantine.parquet`` (bad rows, with
    ``on_bad_rows="quarantine"``) and ``manifest.json``, all at once or not at all.
    """
    spark = spark_session(config.engine)
    inputs = resolve_spark_input(spark, events)
    if inputs.ingested is not None:
        raise UserError(f"{events}: already an ingest output directory")
    on_bad_rows = on_bad_rows or config.ingest.on_bad_rows
    profiles_path = str(profiles) if profiles else inputs.profiles
    stitched = _stage_and_stitch(spark, inputs, config, on_bad_rows, as_of, profiles_path)
    summary = _summarise(stitched, on_bad_rows == "quarantine")
    from pyspark.sql import functions as F  # noqa: N812

    with atomic_output(spark, out) as tmp:
        write_parquet(
            stitched.events.drop("_source_file", "_source_row").orderBy("timestamp", "event_id"),
            f"{tmp}/events.parquet",
        )
        write_parquet(
            stitched.identity_map.select("namespace", "value", "profile_id").orderBy(
                "profile_id", "namespace", "value"
            ),
            f"{tmp}/identity_map.parquet",
        )
        write_parquet(stitched.profiles, f"{tmp}/profiles.parquet")
        if on_bad_rows == "quarantine" and summary.bad_rows:
            bad = stitched.staged.bad
            others = [
                F.col(f"`{c}`") for c in bad.columns if c not in ("reason", "_source_file", "_source_row")
            ]
            write_parquet(
                bad.select(
                    "reason",
                    F.col("_source_file").alias("source_file"),
                    F.col("_source_row").alias("source_row"),
                    *others,
                ).orderBy("source_file", "source_row"),
                f"{tmp}/quarantine.parquet",
            )
        manifest = {
            "format": INGEST_FORMAT,
            "engine": "spark",
            "source": inputs.display,
            "profiles_source": profiles_path,
            "ground_truth": _ground_truth(inputs),
            "as_of": str(as_of) if as_of else None,
            "on_bad_rows": on_bad_rows,
            **asdict(summary),
        }
        write_text(spark, json.dumps(manifest, indent=2, default=str), f"{tmp}/manifest.json")
    stitched.events.unpersist()
    return summary


def _ground_truth(inputs: SparkInput) -> str | None:
    if inputs.ground_truth is None or is_remote(inputs.ground_truth):
        return inputs.ground_truth
    return str(Path(inputs.ground_truth).resolve())


def load_events(spark: SparkSession, events: str | Path, config: ProjectConfig) -> SparkEvents:
    """Raw events or an ingest directory (either engine's) -> the views ``events`` and ``profiles``.

    Raw events are validated and stitched in memory exactly as :func:`ingest` would.
    """
    inputs = resolve_spark_input(spark, events)
    if inputs.ingested is not None:
        root = inputs.ingested
        manifest = json.loads(read_text(spark, f"{root}/manifest.json"))
        if manifest.get("format") != INGEST_FORMAT:
            raise UserError(
                f"{root}: written by an older propensity (ingest format "
                f"{manifest.get('format', 1)}, need {INGEST_FORMAT}); run `propensity ingest` again"
            )
        tables = {name: spark.read.parquet(f"{root}/{name}.parquet") for name in ("events", "profiles")}
        identity_map = spark.read.parquet(f"{root}/identity_map.parquet")
        sf.register(tables["events"], tables["profiles"])
        return SparkEvents(spark, inputs, tables["events"], tables["profiles"], identity_map, manifest)
    on_bad_rows = config.ingest.on_bad_rows
    stitched = _stage_and_stitch(spark, inputs, config, on_bad_rows, None, inputs.profiles)
    events_frame = stitched.events.drop("_source_file", "_source_row")
    sf.register(events_frame, stitched.profiles)
    return SparkEvents(spark, inputs, events_frame, stitched.profiles, stitched.identity_map)


def feature_set(
    spark: SparkSession, config: ProjectConfig, before: dt.date, categories: list[str] | None = None
):
    """The registry for this project (``feature_jobs.feature_set`` with categories learned on Spark)."""
    categories = categories if categories is not None else config.features.categories
    if categories is None:
        categories = sf.learn_categories(spark, before, config.features.max_learned_categories)
    return build_registry(config.features, categories)


def build_features(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    model: str | None = None,
) -> FeatureTable:
    """The feature table at ``as_of`` as a Parquet directory (``feature_jobs.build_features``).

    With a model, only its population, plus ``label`` when its horizon has passed. The
    registry facts (labels, categories, as_of) go to ``OUT/_propensity.json`` beside the parts.
    """
    from pyspark.sql import functions as F  # noqa: N812

    spark = spark_session(config.engine)
    load_events(spark, events, config)
    cutoff = sf.data_end(spark)
    as_of = as_of or cutoff
    fs = feature_set(spark, config, as_of)
    if model:
        table, labelled = sf.population_snapshot(spark, fs, load_model_config(model, config), as_of, cutoff)
    else:
        table, labelled = sf.snapshot(spark, fs, as_of), False
    metadata = {
        "as_of": str(as_of),
        "model": model,
        "categories": fs.categories,
        "labels": fs.labels(),
        "features": fs.names(),
    }
    with atomic_output(spark, out) as tmp:
        write_parquet(table.orderBy("profile_id"), tmp)
        write_text(spark, json.dumps(metadata), f"{tmp}/_propensity.json")
        written = (
            spark.read.parquet(tmp)
            .agg(F.count(F.lit(1)), F.sum("label") if labelled else F.lit(None))
            .first()
        )
    return FeatureTable(
        out=Path(out),
        as_of=as_of,
        rows=int(written[0]),
        features=len(fs.names()),
        labelled=labelled,
        positives=int(written[1] or 0) if labelled else None,
        model=model,
        data_end=cutoff,
    )


@dataclass(frozen=True)
class TrainingData:
    """What :func:`training_sample` hands to one machine: the sample and how it was built."""

    sample: sf.TrainingSample
    fs: Any  # FeatureSet
    labels: dict[str, str]  # model feature name -> label
    dates: list[dt.date]
    cutoff: dt.date
    display: str


def training_sample(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> TrainingData:
    """Stacked, labelled snapshots of the model's population built on Spark, sampled to at most
    ``training.max_training_rows`` rows with the same share of each label."""
    from propensity.features.labels import population_rule, snapshot_dates

    model_cfg = load_model_config(model_name, config)
    spark = spark_session(config.engine)
    loaded = load_events(spark, events, config)
    cutoff = as_of or sf.data_end(spark)
    spacing = model_cfg.training.snapshots
    first_date = snapshot_dates(cutoff, model_cfg.outcome.horizon_days, spacing.count, spacing.spacing_days)[
        0
    ]
    fs = feature_set(spark, config, before=first_date)
    population_rule(model_cfg, fs)  # a bad rule or feature name fails before any heavy work
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    frame, dates = sf.training_snapshots(spark, fs, model_cfg, cutoff)
    sample = sf.sample_by_label(frame, model_cfg.training.max_training_rows, model_cfg.training.seed)
    return TrainingData(sample, fs, labels, dates, cutoff, loaded.inputs.display)


def train_model(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> TrainResult:
    """Train on a Spark-built sample (:func:`training_sample`) on this machine, log it to MLflow
    with how the sample was drawn, and register it as challenger (``model_jobs.train_model``)."""
    from propensity.pipeline.model_jobs import fit_and_register

    data = training_sample(model_name, events, config, as_of)
    return fit_and_register(
        load_model_config(model_name, config),
        config,
        data.fs,
        data.labels,
        data.sample.frame,
        data.dates,
        data.cutoff,
        events_display=data.display,
        sampling={"engine": "spark", **data.sample.describe()},
    )
