"""The ingest, feature and training jobs on Apache Spark (``engine.name: spark``).

The same steps as :mod:`propensity.pipeline.jobs.ingest`, :mod:`.feature_jobs` and
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from propensity.core.config import IdentityConfig, ModelConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import check_output
from propensity.features.build.registry import build_registry, model_features
from propensity.features.identity.as_of import AsOfSources
from propensity.features.ingest.staging import bad_rows_message
from propensity.features.spark import features as sf
from propensity.features.spark import identity as spark_identity
from propensity.features.spark.as_of import SparkIdentityGraph
from propensity.features.spark.ingest import stage_events, stage_profiles
from propensity.features.spark.session import (
    SparkInput,
    atomic_output,
    is_remote,
    path_exists,
    read_text,
    resolve_spark_input,
    spark_session,
    write_parquet,
    write_text,
)
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.features import FeatureTable
from propensity.pipeline.jobs.ingest import GRAPH_TABLES, INGEST_FORMAT, IngestSummary, OnBadRows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from propensity.features.spark.identity import SparkGraph
    from propensity.features.spark.ingest import SparkStaged
    from propensity.pipeline.jobs.train import TrainResult


@dataclass
class SparkEvents:
    """Events on Spark: the temp views ``events``, ``profiles`` and the identity graph's
    (``identity_map``, ``identity_links``, ``identity_unsettled``), where they came from, and
    ``graph`` to see them as of a date."""

    spark: SparkSession
    inputs: SparkInput
    tables: dict[str, DataFrame]
    graph: SparkIdentityGraph
    manifest: dict[str, Any] | None = None

    def sources(self, as_of: dt.date) -> AsOfSources:
        """The events and profiles as of ``as_of``: what every snapshot at that date reads."""
        return self.graph.sources(as_of)


@dataclass
class _Stitched:
    staged: SparkStaged
    graph: SparkGraph
    events: DataFrame  # stitched, with _source_file / _source_row
    profiles: DataFrame
    attributes: DataFrame | None  # staged profile attributes with their anchor_key


def _stage_and_stitch(
    spark: SparkSession,
    inputs: SparkInput,
    config: ProjectConfig,
    on_bad_rows: OnBadRows,
    as_of: dt.date | None,
    profiles: str | None,
    consent_rows: OnBadRows | None = None,
) -> _Stitched:
    identity = config.identity
    staged = stage_events(
        spark, inputs, identity, as_of, config.ingest.max_reported_rows, config.ingest.future_tolerance_hours
    )
    if staged.summary.rows_bad and on_bad_rows == "fail":
        raise UserError(bad_rows_message(inputs.display, staged.summary))
    attributes = namespaces = None
    if profiles is not None:
        attributes, namespaces = stage_profiles(
            spark, profiles, profiles, identity, consent_rows or on_bad_rows
        )
    rows = spark_identity.identity_rows(staged.clean, identity, attributes, namespaces)
    graph = spark_identity.stitch(spark, rows, identity)
    events = spark_identity.attribute_events(staged.clean, graph.identity_map, identity).persist()
    if attributes is not None:
        attributes = spark_identity.anchor_attributes(attributes, graph.identity_map, identity, namespaces)
    profile_table = spark_identity.build_profiles(
        graph.identity_map, events, identity, attributes, namespaces
    )
    return _Stitched(staged, graph, events, profile_table, attributes)


def _summarise(stitched: _Stitched, quarantined: bool) -> IngestSummary:
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention

    events, staged = stitched.events, stitched.staged.summary

    def ordered(column) -> dict[str, int]:
        rows = events.groupBy(column.alias("key")).count().orderBy(F.desc("count"), "key").collect()
        return {row["key"]: int(row["count"]) for row in rows}

    span = events.agg(F.min("timestamp"), F.max("timestamp")).first()
    identities = stitched.graph.identity_map.groupBy("namespace").count().orderBy("namespace").collect()
    return IngestSummary(
        rows_in=staged.rows_in,
        rows_written=staged.rows_clean,
        duplicates_dropped=staged.rows_duplicate,
        conflicting_duplicates=staged.rows_conflicting,
        rows_quarantined=staged.rows_bad if quarantined else 0,
        bad_rows=staged.rows_bad,
        bad_rows_by_reason=staged.bad_by_reason,
        first_event=str(span[0]) if span[0] else None,
        last_event=str(span[1]) if span[1] else None,
        events_by_type=ordered(F.col("event_type")),
        events_by_channel=ordered(F.coalesce(F.col("channel"), F.lit("(none)"))),
        identities_by_namespace={row["namespace"]: int(row["count"]) for row in identities},
        profiles=stitched.graph.result.profiles,
        known_profiles=stitched.graph.result.known_profiles,
        identity_collapses=[asdict(c) for c in stitched.graph.result.collapses],
        unsettled_profiles=stitched.graph.result.unsettled_profiles,
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
    stitched = _stage_and_stitch(
        spark, inputs, config, "quarantine", as_of, profiles_path, config.ingest.on_bad_rows
    )
    return _summarise(stitched, True)


def ingest(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    profiles: str | Path | None = None,
    on_bad_rows: OnBadRows | None = None,
    as_of: dt.date | None = None,
) -> IngestSummary:
    """Validate, hash, de-duplicate and stitch events on Spark (``ingest_jobs.ingest``).

    ``out`` (any Hadoop path) receives what the DuckDB ingest writes (ingest format 4), each
    table a Parquet directory: ``events``, ``identity_map``, ``identity_links``,
    ``identity_unsettled``, ``profile_attributes`` (with profile attributes), ``profiles``,
    ``quarantine`` (bad rows, with ``on_bad_rows="quarantine"``) and ``manifest.json``, all at
    once or not at all.
    """
    spark = spark_session(config.engine)
    inputs = resolve_spark_input(spark, events)
    if inputs.ingested is not None:
        raise UserError(f"{events}: already an ingest output directory")
    on_bad_rows = on_bad_rows or config.ingest.on_bad_rows
    if not is_remote(out):
        check_output(out, "ingest")  # refused before the work, not only at the swap
    profiles_path = str(profiles) if profiles else inputs.profiles
    stitched = _stage_and_stitch(spark, inputs, config, on_bad_rows, as_of, profiles_path)
    summary = _summarise(stitched, on_bad_rows == "quarantine")
    from pyspark.sql import functions as F  # noqa: N812

    with atomic_output(spark, out, kind="ingest") as tmp:
        write_parquet(
            stitched.events.drop("_source_file", "_source_row").orderBy("timestamp", "event_id"),
            f"{tmp}/events.parquet",
        )
        graph = stitched.graph
        write_parquet(
            graph.identity_map.select(
                "namespace", "value", "profile_id", "profile_key", "node_key", "component", "first_seen"
            ).orderBy("profile_id", "namespace", "value"),
            f"{tmp}/identity_map.parquet",
        )
        write_parquet(graph.identity_links.orderBy("a", "b"), f"{tmp}/identity_links.parquet")
        write_parquet(
            graph.identity_unsettled.orderBy("component", F.col("after").asc_nulls_first()),
            f"{tmp}/identity_unsettled.parquet",
        )
        if stitched.attributes is not None:
            write_parquet(stitched.attributes.orderBy("_source_row"), f"{tmp}/profile_attributes.parquet")
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
            "source": inputs.display,
            "profiles_source": profiles_path,
            "ground_truth": _ground_truth(inputs),
            "as_of": str(as_of) if as_of else None,
            "on_bad_rows": on_bad_rows,
            # The rules the graph was stitched with: the graph as of a date must use the same.
            "identity": config.identity.model_dump(),
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
    """Raw events or an ingest directory (either engine's) -> the views ``events``,
    ``profiles`` and the identity graph's, with the graph to see them as of a date.

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
        tables = {
            name: spark.read.parquet(f"{root}/{name}.parquet")
            for name in ("events", "profiles", *GRAPH_TABLES)
        }
        if path_exists(spark, f"{root}/profile_attributes.parquet"):
            tables["profile_attributes"] = spark.read.parquet(f"{root}/profile_attributes.parquet")
        identity = IdentityConfig.model_validate(manifest["identity"])
    else:
        stitched = _stage_and_stitch(spark, inputs, config, config.ingest.on_bad_rows, None, inputs.profiles)
        graph = stitched.graph
        tables = {
            "events": stitched.events.drop("_source_file", "_source_row"),
            "profiles": stitched.profiles,
            "identity_map": graph.identity_map,
            "identity_links": graph.identity_links,
            "identity_unsettled": graph.identity_unsettled,
        }
        if stitched.attributes is not None:
            tables["profile_attributes"] = stitched.attributes
        manifest, identity = None, config.identity
    for name, frame in tables.items():
        frame.createOrReplaceTempView(name)
    graph_as_of = SparkIdentityGraph(spark, identity, tables)
    return SparkEvents(spark, inputs, tables, graph_as_of, manifest)


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
    loaded = load_events(spark, events, config)
    cutoff = sf.data_end(spark)
    as_of = as_of or cutoff
    fs = feature_set(spark, config, as_of)
    # Profiles as the identity graph knew them at as_of: no later link moves an event.
    if model:
        model_cfg = load_model_config(model, config)
        table, labelled = sf.population_snapshot(spark, fs, model_cfg, as_of, cutoff, loaded.graph)
    else:
        sources = loaded.sources(as_of)
        table = sf.snapshot(spark, fs, as_of, events=sources.events, profiles=sources.profiles)
        labelled = False
    metadata = {
        "as_of": str(as_of),
        "model": model,
        "categories": fs.categories,
        "labels": fs.labels(),
        "features": fs.names(),
    }
    with atomic_output(spark, out, kind="features") as tmp:
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
    model: ModelConfig  # with its snapshot plan adapted to the span of the events
    snapshot_note: str | None  # why the plan differs from the config, if it does


def training_sample(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> TrainingData:
    """Stacked, labelled snapshots of the model's population built on Spark (each date's
    profiles as the identity graph knew them then), sampled to at most
    ``training.max_training_rows`` rows with the same share of each label."""
    from propensity.features.build.labels import population_rule, snapshot_dates
    from propensity.models.snapshot_plan import adapt_snapshots

    model_cfg = load_model_config(model_name, config)
    spark = spark_session(config.engine)
    loaded = load_events(spark, events, config)
    cutoff = as_of or sf.data_end(spark)
    first = spark.sql("SELECT min(timestamp) FROM events").first()[0]
    if first is None:
        raise UserError("no events to train on")
    # The snapshot plan adapted to the span of the events, as model_jobs does.
    plan, note = adapt_snapshots(
        model_cfg.training.snapshots, first.date(), cutoff, model_cfg.outcome.horizon_days, model_cfg.name
    )
    model_cfg = model_cfg.model_copy(
        update={"training": model_cfg.training.model_copy(update={"snapshots": plan})}
    )
    first_date = snapshot_dates(cutoff, model_cfg.outcome.horizon_days, plan.count, plan.spacing_days)[0]
    fs = feature_set(spark, config, before=first_date)
    population_rule(model_cfg, fs)  # a bad rule or feature name fails before any heavy work
    labels = model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name)
    frame, dates = sf.training_snapshots(spark, fs, model_cfg, cutoff, loaded.graph)
    sample = sf.sample_by_label(frame, model_cfg.training.max_training_rows, model_cfg.training.seed)
    return TrainingData(sample, fs, labels, dates, cutoff, loaded.inputs.display, model_cfg, note)


def train_model(
    model_name: str, events: str | Path, config: ProjectConfig, as_of: dt.date | None = None
) -> TrainResult:
    """Train on a Spark-built sample (:func:`training_sample`) on this machine, log it to MLflow
    with how the sample was drawn, and register it as challenger (``model_jobs.train_model``)."""
    from propensity.pipeline.jobs.train import fit_and_register

    started = time.perf_counter()
    data = training_sample(model_name, events, config, as_of)
    return fit_and_register(
        data.model,
        config,
        data.fs,
        data.labels,
        data.sample.frame,
        data.dates,
        data.cutoff,
        events_display=data.display,
        snapshot_note=data.snapshot_note,
        started=started,
        sampling={"engine": "spark", **data.sample.describe()},
    )
