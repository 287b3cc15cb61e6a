"""The engine seam: what every job asks of DuckDB or Spark, and nothing more.

Each job in :mod:`propensity.pipeline.jobs` is written once against two small interfaces, the
way Feast puts its offline stores (DuckDB, Spark, ...) behind one ``OfflineStore``:

* :class:`Engine` - load events (raw ones staged and stitched in memory, or an ingest
  directory) as :class:`Events`, stage and stitch them for an ingest directory and write it, write
  a feature table, score a population with a scorer and
  write the ranked partition, qualify segments, and atomic directories on its file system;
* :class:`Events` - loaded events: the data end, learned categories and event types, the
  sources as of a date,
  a feature snapshot as a relation (DuckDB: SQL over the connection; Spark: a DataFrame), a
  model's population and labelled training rows, and the kinds of a relation's columns.

Two implementations satisfy them: :mod:`propensity.features.duckdb` (the default) and
:mod:`propensity.features.spark.engine`. What both do the same way is written once here and
inherited: :class:`SharedSteps` here (loading events, the order of staging and stitching, the
ingest breakdown and tables, the feature table, qualifying segments) and
:class:`propensity.features.build.event_queries.SqlEvents` (the questions answered by one query
in DuckDB's SQL, the as-of sources, a model's population snapshot over
:mod:`propensity.features.build.model_frames`); each wing supplies the primitives.
``propensity.pipeline.jobs.events.engine_for`` is the one place that picks one. The protocols
live here rather than in ``pipeline`` because their arguments and results are features'
vocabulary (feature sets, rules, segments, sources): both wings import these data types
without importing the jobs.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.config import ModelConfig, OutcomeConfig, ProjectConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.features.activation.segments import Qualification, Segment, SegmentRows, qualify_on
from propensity.features.build.event_queries import EventHistory
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.rules import Rule
from propensity.features.build.training_sample import RowChoice
from propensity.features.identity.as_of import AsOfSources
from propensity.features.ingest import summary
from propensity.features.ingest.manifest import (
    IngestFile,
    OnBadRows,
    checked_manifest,
    ingest_files,
    ingest_table_sql,
    quarantine_sql,
)
from propensity.features.ingest.staging import StagedEvents
from propensity.features.ingest.summary import Breakdown
from propensity.features.journeys.engine import Runner

# A query's result on an engine: DuckDB SQL text over the events' connection, or a Spark
# DataFrame. Only the engine that made it reads it.
Relation = Any
# One batch of feature rows (with the identity columns named) -> score-table rows, less the
# percentile: the same function on a DuckDB thread and in Spark's mapInArrow.
Scorer = Callable[[pa.RecordBatch, list[str]], pa.Table]
Progress = Callable[[int, int | None], None]  # (profiles scored, all to score once known)


@dataclass(frozen=True)
class TrainingRows:
    """Stacked labelled snapshots on one machine, and how they were drawn (None: all of them)."""

    frame: pd.DataFrame
    dates: list[dt.date]
    sampling: dict[str, Any] | None = None


@dataclass(frozen=True)
class ScoringPlan:
    """What an engine needs to score a model's population at ``as_of``."""

    fs: FeatureSet
    as_of: dt.date
    population: Rule
    feature_names: list[str]  # the model's feature columns, in its order
    unused: dict[str, str]  # features no tree splits on -> the type of the NULL standing in
    scorer: Scorer
    identity_namespaces: tuple[str, ...]  # one representative value each, where present
    chunk_rows: int
    partitions: int | None  # profile partitions of the feature build (None: the engine's choice)
    progress: Progress | None = None
    uplift: bool = False  # an uplift model: the score batches carry `uplift` (core.score_table)


@dataclass(frozen=True)
class Scored:
    """A written, ranked score partition: its counts and what its run logs."""

    profiles: int  # profiles with a feature row at as_of
    eligible: int  # of those, in the model's population
    scored: int
    bucket_sizes: dict[str, int]
    histogram: list[int]  # scores counted in [0, 5), [5, 10), ... [95, 100]
    sample: np.ndarray  # scores for the histogram figure (all of them, or a sample)


class Events(Protocol):
    """Events opened on an engine: ``events``, ``profiles`` and the identity graph."""

    inputs: Any  # where they came from: .display, .ingested, .ground_truth
    manifest: dict[str, Any] | None  # an ingest directory's manifest.json
    # training_rows builds features for a RowChoice's rows only (the row budget counts those).
    builds_chosen_rows: bool

    def sources(self, as_of: dt.date) -> AsOfSources: ...
    def data_end(self) -> dt.date: ...
    def span(self) -> tuple[dt.date, dt.date] | None: ...
    def vocabulary(
        self, before: dt.date, categories: int, event_types: int
    ) -> tuple[list[str], list[str]]: ...
    def history(self, event_types: list[str]) -> EventHistory: ...
    def treated(self, treatment: TreatmentConfig, as_ofs: list[dt.date]) -> pd.DataFrame: ...
    def rows(self, sql: str) -> list[tuple]: ...
    def snapshot(self, fs: FeatureSet, as_of: dt.date, where: str | None = None) -> Relation: ...
    def population_snapshot(
        self, fs: FeatureSet, model: ModelConfig, as_of: dt.date, cutoff: dt.date
    ) -> tuple[Relation, bool]: ...
    def training_rows(
        self, fs: FeatureSet, model: ModelConfig, cutoff: dt.date, choice: RowChoice | None = None
    ) -> TrainingRows: ...
    def column_kinds(self, relation: Relation) -> dict[str, str]: ...
    def frame(self, relation: Relation) -> pd.DataFrame: ...
    def oracle(self, frame: pd.DataFrame, outcome: OutcomeConfig) -> np.ndarray | None: ...
    def journey_runner(self) -> Runner: ...


class Stitched(Protocol):
    """Events staged and stitched in memory (an engine's own handle), with their counts and the
    views the ingest breakdown reads: the clean events (``events_view``; ``lines_view`` for
    the purchase lines) and the identity map; ``view`` names the view of each ingest table
    (``quarantine``: the bad rows), which ``write`` copies to Parquet."""

    counts: StagedEvents
    events_view: str
    lines_view: str
    identity_view: str
    with_attributes: bool  # whether there are profile attributes (profile_attributes.parquet)

    def rows(self, sql: str) -> list[tuple]: ...
    def columns(self, view: str) -> list[str]: ...
    def view(self, table: str) -> str: ...
    def write(self, sql: str, path: str) -> None: ...
    def close(self) -> None: ...


def bad_rows_message(display: str, staged: StagedEvents) -> str:
    """The one-line failure for ``--on-bad-rows fail``: counts by reason and first rows."""
    reasons = ", ".join(f"{k}: {v}" for k, v in staged.bad_by_reason.items())
    multi_file = len({row["file"] for row in staged.first_bad}) > 1
    rows = "; ".join(
        (f"{Path(r['file']).name} row {r['row']}" if multi_file else f"row {r['row']}") + f" ({r['reason']})"
        for r in staged.first_bad
    )
    return (
        f"{display}: {staged.rows_bad} bad rows ({reasons}); first: {rows}. "
        f"Fix them, or pass --on-bad-rows quarantine to set them aside."
    )


class SharedSteps(ABC):
    """The engine steps written once: both engines inherit them and supply the primitives."""

    config: ProjectConfig

    @abstractmethod
    def resolve_input(self, path: Any) -> Any:
        """Events files, a folder of them, or an ingest directory."""

    @abstractmethod
    def read_text(self, path: str) -> str:
        """A small text file on this engine's file system."""

    @abstractmethod
    def stage_events(
        self, inputs: Any, as_of: dt.date | None, settings: tuple[int, int, dict[str, str]]
    ) -> Any:
        """The events validated, normalised and de-duplicated (the wing's staging; ``settings``:
        its last arguments, rows reported, future tolerance in hours, event type renames), not
        yet stitched: a handle with their ``counts`` and ``close()``."""

    @abstractmethod
    def stitch(self, staged: Any, profiles: Any, on_bad_rows: OnBadRows) -> Any:
        """The profile attributes file (``profiles``, or None) staged beside ``staged``'s events,
        identities stitched into profiles, the events attributed and ``profiles`` built
        (:class:`Stitched`)."""

    def stage(
        self,
        inputs: Any,
        profiles: Any,
        on_bad_rows: OnBadRows,
        as_of: dt.date | None,
        consent_rows: OnBadRows | None = None,
    ) -> Any:
        """Validate, normalise and de-duplicate the events (a bad row stops here with
        ``on_bad_rows="fail"``; an unrecognised consent value per ``consent_rows``, by default
        ``on_bad_rows``), then stitch identities into profiles, attribute the events and build
        ``profiles`` (:class:`Stitched`): the order both wings follow, with their primitives."""
        ingest = self.config.ingest
        settings = (ingest.max_reported_rows, ingest.future_tolerance_hours, ingest.event_type_mapping)
        staged = self.stage_events(inputs, as_of, settings)
        if staged.counts.rows_bad and on_bad_rows == "fail":  # stop before any stitching
            staged.close()
            raise UserError(bad_rows_message(inputs.display, staged.counts))
        return self.stitch(staged, profiles, consent_rows or on_bad_rows)

    @abstractmethod
    def open_ingested(self, inputs: Any, manifest: dict[str, Any]) -> Events:
        """An ingest directory (either engine's) as the views every later step reads."""

    @abstractmethod
    def open_stitched(self, inputs: Any, stitched: Any) -> Events:
        """Events staged and stitched in memory as the views every later step reads."""

    def load_events(self, path: Any, on_bad_rows: OnBadRows | None = None) -> Events:
        """Raw events (validated and stitched in memory, as ``ingest`` would) or an ingest
        directory (either engine's) as the views every later step reads."""
        inputs = self.resolve_input(path)
        if inputs.ingested is not None:
            text = self.read_text(f"{inputs.ingested}/manifest.json")
            return self.open_ingested(inputs, checked_manifest(text, inputs.ingested))
        stitched = self.stage(inputs, inputs.profiles, on_bad_rows or self.config.ingest.on_bad_rows, None)
        return self.open_stitched(inputs, stitched)

    @abstractmethod
    def segment_rows(self, events: Any, as_of: dt.date) -> SegmentRows:
        """Where a qualification's query runs, over the events' sources as of ``as_of``."""

    def qualify(
        self,
        events: Events,
        segments: list[Segment],
        features: Relation,
        scores: dict[str, list[str]],
        out_dir: Any,
        as_of: dt.date,
        namespaces: list[str],
    ) -> Qualification:
        """Every segment's memberships at ``as_of`` in one query, written to ``out_dir``
        (:func:`~propensity.features.activation.segments.qualify_on`)."""
        site = self.segment_rows(events, as_of)
        return qualify_on(site, segments, features, scores, out_dir, as_of, namespaces)

    def breakdown(self, stitched: Stitched) -> Breakdown:
        """The time range, events by type and channel, identities by namespace, purchase lines
        and orders (with a warning for line items fed as orders)."""
        has_order_id = summary.ORDER_ID in stitched.columns(stitched.events_view)
        return summary.breakdown(
            stitched.rows(summary.events_sql(stitched.events_view)),
            stitched.rows(summary.identities_sql(stitched.identity_view)),
            stitched.rows(summary.line_items_sql(stitched.lines_view, has_order_id))[0],
        )

    @abstractmethod
    def atomic_output(self, path: Any, kind: str | None = None) -> AbstractContextManager[Any]:
        """A free temporary path (nothing there yet) that replaces ``path`` whole when the block
        succeeds (a ``kind`` output: another kind of folder is refused)."""

    @abstractmethod
    def write_features(self, events: Any, relation: Relation, path: str, metadata: dict[str, Any]) -> str:
        """A feature relation written at ``path`` with the registry facts ``metadata``; what to
        select the written rows from (DuckDB's SQL, read by ``events.rows``)."""

    def write_feature_table(
        self, events: Events, relation: Relation, out: Any, metadata: dict[str, Any], labelled: bool
    ) -> tuple[int, int | None]:
        """The feature table at ``out``, whole or not at all; its rows and (``labelled``)
        positives, counted in what was written rather than by building the relation again."""
        with self.atomic_output(out, kind="features") as tmp:
            written = self.write_features(events, relation, str(tmp), metadata)
            positives = "sum(label)" if labelled else "NULL"
            rows, total = events.rows(f"SELECT count(*), {positives} FROM {written}")[0]
        return int(rows), (int(total or 0) if labelled else None)

    def write_ingest(self, stitched: Stitched, directory: str, quarantine: bool) -> None:
        """The ingest tables (:func:`~propensity.features.ingest.manifest.ingest_files`) into
        ``directory`` as Parquet (a file each on DuckDB, a directory of parts on Spark), with
        ``quarantine`` the bad rows too; one query each over the stitched views."""
        for table in ingest_files(stitched.with_attributes):
            self.write_ingest_table(stitched, table, f"{directory}/{table.name}.parquet")
        if quarantine:
            view = stitched.view("quarantine")
            stitched.write(quarantine_sql(view, stitched.columns(view)), f"{directory}/quarantine.parquet")

    def write_ingest_table(self, stitched: Stitched, table: IngestFile, path: str) -> None:
        """One ingest table's rows (:func:`~propensity.features.ingest.manifest.ingest_table_sql`)
        at ``path``, one query over its stitched view (DuckDB sorts the events range by range)."""
        view = stitched.view(table.name)
        stitched.write(ingest_table_sql(table, view, stitched.columns(view)), path)


class Engine(Protocol):
    """One engine's side of every job (see the module docstring)."""

    name: str

    def resolve_input(self, path: Any) -> Any: ...
    def load_events(self, path: Any, on_bad_rows: OnBadRows | None = None) -> Events: ...
    def stage(
        self,
        inputs: Any,
        profiles: Any,
        on_bad_rows: OnBadRows,
        as_of: dt.date | None,
        consent_rows: OnBadRows | None = None,
    ) -> Stitched: ...
    def breakdown(self, stitched: Any) -> Breakdown: ...
    def write_ingest(self, stitched: Any, directory: str, quarantine: bool) -> None: ...
    def atomic_directory(self, path: Any, kind: str | None = None) -> AbstractContextManager[str]: ...
    def write_text(self, text: str, path: str) -> None: ...
    def output_path(self, path: Any) -> str: ...
    def write_feature_table(
        self, events: Any, relation: Relation, out: Any, metadata: dict[str, Any], labelled: bool
    ) -> tuple[int, int | None]: ...
    def score(self, events: Any, plan: ScoringPlan, target: str) -> Scored: ...
    def qualify(
        self,
        events: Any,
        segments: list[Segment],
        features: Relation,
        scores: dict[str, list[str]],
        out_dir: Any,
        as_of: dt.date,
        namespaces: list[str],
    ) -> Qualification: ...
