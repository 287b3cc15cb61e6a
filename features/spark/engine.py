"""Every job's engine steps on Apache Spark (``engine.name: spark``).

:class:`SparkEngine` and :class:`SparkEvents` satisfy :mod:`propensity.features.engine`'s
protocols with the heavy work on a cluster: staging, stitching, feature tables and labels are
Spark DataFrames; outputs are Parquet directories on any Hadoop path (local, ``hdfs://``,
``s3a://``, ``abfss://``). Training stays on one machine: Spark builds the stacked, labelled
snapshots and hands over a sample of at most ``training.max_training_rows`` rows (the same
share of each label). An ingest directory written here reads on DuckDB and the other way round.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from propensity.core.config import IdentityConfig, ModelConfig, ProjectConfig
from propensity.features.build.event_queries import SqlEvents
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.model_frames import training_frame
from propensity.features.build.training_sample import RowChoice
from propensity.features.engine import Scored, ScoringPlan, SharedSteps, TrainingRows
from propensity.features.ingest.manifest import SOURCE_COLUMNS, OnBadRows, ingested_view_sql, ingested_views
from propensity.features.ingest.staging import StagedEvents
from propensity.features.spark import features as sf
from propensity.features.spark import identity as spark_identity
from propensity.features.spark import scoring
from propensity.features.spark.as_of import SparkIdentityGraph
from propensity.features.spark.ingest import SparkStaged, stage_events, stage_profiles
from propensity.features.spark.journeys import SparkRunner
from propensity.features.spark.qualify import SparkSegmentRows
from propensity.features.spark.session import (
    SparkInput,
    atomic_output,
    hadoop_path,
    path_exists,
    read_text,
    resolve_spark_input,
    spark_session,
    to_pandas,
    write_parquet,
    write_text,
)
from propensity.features.sql import SPARK, usable_kinds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from propensity.features.spark.identity import SparkGraph


@dataclass
class SparkEvents(SqlEvents):
    """Events on Spark: the temp views ``events``, ``profiles`` and the identity graph's
    (``identity_map``, ``identity_links``, ``identity_unsettled``), where they came from, and
    ``graph`` to see them as of a date."""

    spark: SparkSession
    inputs: SparkInput
    tables: dict[str, DataFrame]
    graph: SparkIdentityGraph
    manifest: dict[str, Any] | None = None
    dialect = SPARK
    builds_chosen_rows = False  # the cluster builds every row; training_rows samples by label

    def journey_runner(self) -> SparkRunner:
        """The journey queries' runner over this session."""
        return SparkRunner(self.spark)

    def rows(self, sql: str) -> list[tuple]:
        """The rows of a query (DuckDB's SQL, transpiled) over the temp views."""
        return [tuple(r) for r in self.spark.sql(sf.duckdb_to_spark(sql)).collect()]

    def snapshot(self, fs: FeatureSet, as_of: dt.date, where: str | None = None) -> DataFrame:
        """The feature snapshot at ``as_of`` over the events and profiles as of that date."""
        sources = self.sources(as_of)
        return sf.snapshot(self.spark, fs, as_of, where, events=sources.events, profiles=sources.profiles)

    def as_query(self, relation: DataFrame, name: str) -> str:
        """A DataFrame as a query other SQL can wrap: a temp view named ``name``."""
        relation.createOrReplaceTempView(name)
        return f"SELECT * FROM {name}"

    def query(self, sql: str) -> DataFrame:
        """A query (Spark SQL) as a DataFrame."""
        return self.spark.sql(sql)

    def stack_snapshots(
        self, fs: FeatureSet, dates: list[dt.date], where: str, events: str, events_sql: str
    ) -> str:
        """The population's snapshots at ``dates`` stacked into the temp view it names, date by
        date over the events (all before each date) as the identity graph then saw them;
        ``events`` (what the labels read) is a temp view made here over ``events_sql``."""
        self.spark.sql(events_sql).createOrReplaceTempView(events)
        sf.stacked_snapshots(self.spark, fs, dates, where, self.graph).createOrReplaceTempView(
            "snapshot_features"
        )
        return "snapshot_features"

    def training_rows(
        self, fs: FeatureSet, model: ModelConfig, cutoff: dt.date, choice: RowChoice | None = None
    ) -> TrainingRows:
        """Stacked labelled snapshots built on Spark, sampled to ``training.max_training_rows``
        rows with the same share of each label. ``choice`` (labels-first sampling, which bounds
        one machine's memory) is not used: the cluster builds every row, and only the sample
        comes to this machine."""
        frame, dates = training_frame(self, fs, model, cutoff)
        sample = sf.sample_by_label(frame, model.training.max_training_rows, model.training.seed)
        return TrainingRows(sample.frame, dates, {"engine": "spark", **sample.describe()})

    def column_kinds(self, relation: DataFrame) -> dict[str, str]:
        """The kinds (number, string, boolean) rules compare, by column of ``relation``."""
        return usable_kinds((f.name, f.dataType.simpleString()) for f in relation.schema.fields)

    def frame(self, relation: DataFrame) -> pd.DataFrame:
        """A relation's rows on this machine (through Arrow)."""
        return to_pandas(relation)


@dataclass
class Stitched:
    """Events staged and stitched on Spark, with their counts."""

    staged: SparkStaged
    graph: SparkGraph
    events: DataFrame  # stitched, with _source_file / _source_row
    profiles: DataFrame
    attributes: DataFrame | None  # staged profile attributes with their anchor_key
    events_view = lines_view = "ingest_clean_events"  # registered by SparkEngine.stage
    identity_view = "ingest_identity_map"

    def rows(self, sql: str) -> list[tuple]:
        """The rows of a query (DuckDB's SQL, transpiled) over the stitched views."""
        return [tuple(r) for r in self.events.sparkSession.sql(sf.duckdb_to_spark(sql)).collect()]

    def columns(self, view: str) -> list[str]:
        """A stitched view's columns, in order."""
        return self.events.sparkSession.table(view).columns

    @property
    def with_attributes(self) -> bool:
        """Whether profile attributes were staged (``profile_attributes``)."""
        return self.attributes is not None

    def view(self, table: str) -> str:
        """The temp view an ingest table is written from (registered by SparkEngine.stage)."""
        return self.events_view if table == "events" else f"ingest_{table}"

    def write(self, sql: str, path: str) -> None:
        """A query's rows (DuckDB's SQL, transpiled) as a Parquet directory (zstd)."""
        write_parquet(self.events.sparkSession.sql(sf.duckdb_to_spark(sql)), path)

    @property
    def counts(self) -> StagedEvents:
        return self.staged.counts

    @property
    def result(self):
        return self.graph.result

    def close(self) -> None:
        """Release the cached stitched events."""
        self.events.unpersist()


class SparkEngine(SharedSteps):
    """The Spark side of every job (``engine.name: spark``)."""

    name = "spark"

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.spark = spark_session(config.engine)

    def resolve_input(self, path: str | Path) -> SparkInput:
        """Events files, a folder of them, or an ingest directory, on any Hadoop path."""
        return resolve_spark_input(self.spark, path)

    def read_text(self, path: str) -> str:
        """A small text file on any Hadoop path."""
        return read_text(self.spark, path)

    def open_stitched(self, inputs: SparkInput, stitched: Stitched) -> SparkEvents:
        """Events staged and stitched on Spark as the temp views every later step reads."""
        graph = stitched.graph
        tables = {
            "events": stitched.events.drop(*SOURCE_COLUMNS),
            "profiles": stitched.profiles,
            "identity_map": graph.identity_map,
            "identity_links": graph.identity_links,
            "identity_unsettled": graph.identity_unsettled,
        }
        if stitched.attributes is not None:
            tables["profile_attributes"] = stitched.attributes
        return self._publish(inputs, tables, self.config.identity, None)

    def stage_events(self, inputs: SparkInput, as_of: dt.date | None, settings: tuple) -> SparkStaged:
        """The events staged with the Column API (:func:`~propensity.features.spark.ingest.stage_events`)."""
        return stage_events(self.spark, inputs, self.config.identity, as_of, *settings)

    def stitch(self, staged: SparkStaged, profiles: str | Path | None, on_bad_rows: OnBadRows) -> Stitched:
        """The profile attributes staged (when given), identities stitched into profiles
        (large-star / small-star components), the events attributed, ``profiles`` built, and
        the temp views the ingest breakdown and tables read (``Stitched.rows``, ``.write``)."""
        identity, attributes, namespaces = self.config.identity, None, None
        if profiles is not None:
            attributes, namespaces = stage_profiles(
                self.spark, str(profiles), str(profiles), identity, on_bad_rows
            )
        rows = spark_identity.identity_rows(staged.clean, identity, attributes, namespaces)
        graph = spark_identity.stitch(self.spark, rows, identity)
        events = spark_identity.attribute_events(staged.clean, graph.identity_map, identity).persist()
        if attributes is not None:
            attributes = spark_identity.anchor_attributes(
                attributes, graph.identity_map, identity, namespaces
            )
        profile_table = spark_identity.build_profiles(
            graph.identity_map, events, identity, attributes, namespaces
        )
        stitched = Stitched(staged, graph, events, profile_table, attributes)
        views = {"events": events, "identity_map": graph.identity_map, "profiles": profile_table}
        views.update(identity_links=graph.identity_links, identity_unsettled=graph.identity_unsettled)
        views.update(quarantine=staged.bad, profile_attributes=attributes)
        for table, frame in views.items():
            if frame is not None:
                frame.createOrReplaceTempView(stitched.view(table))
        return stitched

    def open_ingested(self, inputs: SparkInput, manifest: dict[str, Any]) -> SparkEvents:
        """An ingest directory (either engine's) as temp views; ``profile_attributes`` when written."""
        root, frames = inputs.ingested, {}
        for name in ingested_views(path_exists(self.spark, f"{root}/profile_attributes.parquet")):
            frame = self.spark.read.parquet(f"{root}/{name}.parquet")
            frame.createOrReplaceTempView(f"ingested_{name}")
            frames[name] = self.spark.sql(ingested_view_sql(name, f"ingested_{name}", frame.columns))
        return self._publish(inputs, frames, IdentityConfig.model_validate(manifest["identity"]), manifest)

    def _publish(
        self, inputs, tables: dict[str, DataFrame], identity: IdentityConfig, manifest
    ) -> SparkEvents:
        for name, frame in tables.items():
            frame.createOrReplaceTempView(name)
        graph = SparkIdentityGraph(self.spark, identity, tables)
        return SparkEvents(self.spark, inputs, tables, graph, manifest)

    def atomic_directory(self, path: str | Path, kind: str | None = None):
        """A temporary path that replaces ``path`` whole when the block succeeds (a ``kind``
        output: another kind of local folder is refused)."""
        return self.atomic_output(path, kind=kind)

    def write_text(self, text: str, path: str) -> None:
        """A small text file on any Hadoop path."""
        write_text(self.spark, text, path)

    def output_path(self, path: str | Path) -> str:
        """Where outputs go, as Hadoop spells the path."""
        return hadoop_path(path)

    def atomic_output(self, path: str | Path, kind: str | None = None):
        """A temporary path that replaces ``path`` whole when the block succeeds."""
        return atomic_output(self.spark, path, kind=kind)

    def write_features(
        self, events: SparkEvents, relation: DataFrame, path: str, metadata: dict[str, Any]
    ) -> str:
        """A Parquet directory at ``path``, the registry facts in ``PATH/_propensity.json``."""
        write_parquet(relation.orderBy("profile_id"), path)
        write_text(self.spark, json.dumps(metadata), f"{path}/_propensity.json")
        self.spark.read.parquet(path).createOrReplaceTempView("written_features")
        return "written_features"

    def score(self, events: SparkEvents, plan: ScoringPlan, target: str) -> Scored:
        """The population scored on the executors (``mapInArrow``), ranked, written to ``target``."""
        return scoring.score(self.spark, events.sources(plan.as_of), plan, target)

    def segment_rows(self, events: SparkEvents, as_of: dt.date) -> SparkSegmentRows:
        """Qualification on Spark over the events' sources as of ``as_of``; the rows written on
        this machine as the DuckDB job writes them."""
        return SparkSegmentRows(self.spark, events.sources(as_of))
