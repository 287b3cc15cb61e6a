"""Every job's engine steps on DuckDB: one embedded connection over Parquet/CSV/JSONL files.

:class:`DuckDBEngine` stages, stitches and writes; :class:`LoadedEvents` holds a connection with
the views ``events``, ``profiles`` and the identity graph's, and answers the queries the jobs
ask of loaded events. Both satisfy :mod:`propensity.features.engine`'s protocols.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from propensity.core.config import IdentityConfig, ModelConfig, OutcomeConfig, ProjectConfig
from propensity.core.io import atomic_path
from propensity.features.activation import segments as segments_mod
from propensity.features.build.event_queries import SqlEvents
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.model_frames import training_frame
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.build.training_sample import RowChoice, sampled_training_frame
from propensity.features.connection import connect, relation_columns
from propensity.features.duckdb import scoring
from propensity.features.duckdb.ingest_write import Scratch, staged_in_scratch, tie_scratch, write_events
from propensity.features.engine import Scored, ScoringPlan, SharedSteps, TrainingRows
from propensity.features.identity.as_of import IdentityGraph
from propensity.features.identity.stitching import stitch_events
from propensity.features.ingest.inputs import InputFiles, resolve_input
from propensity.features.ingest.manifest import IngestFile, OnBadRows, ingested_view_sql, ingested_views
from propensity.features.ingest.staging import StagedEvents, stage_events, stage_profiles
from propensity.features.journeys.engine import DuckDBRunner
from propensity.features.sql import DUCKDB, sql_string


@dataclass
class LoadedEvents(SqlEvents):
    """A DuckDB connection holding ``events`` (with profile_id), ``profiles`` and the identity
    graph's views, with ``graph`` to see them as of a date."""

    con: duckdb.DuckDBPyConnection
    inputs: InputFiles
    manifest: dict[str, Any] | None = None  # an ingest directory's manifest.json
    graph: IdentityGraph | None = None
    dialect = DUCKDB
    builds_chosen_rows = True  # training_rows builds a RowChoice's rows only

    def rows(self, sql: str) -> list[tuple]:
        """The rows of a query over the loaded views."""
        return self.con.execute(sql).fetchall()

    def journey_runner(self) -> DuckDBRunner:
        """The journey queries' runner over this connection."""
        return DuckDBRunner(self.con)

    def snapshot(self, fs: FeatureSet, as_of: dt.date, where: str | None = None) -> str:
        """The feature snapshot at ``as_of`` over the events and profiles as of that date (SQL)."""
        sources = self.sources(as_of)
        columns = relation_columns(self.con, sources.profiles)
        return snapshot_sql(fs, as_of, columns, events=sources.events, profiles=sources.profiles, where=where)

    def as_query(self, relation: str, name: str) -> str:
        """A relation as a query other SQL can wrap (on DuckDB it is one already)."""
        return relation

    def query(self, sql: str) -> str:
        """A query as a relation (on DuckDB: its SQL, run when read)."""
        return sql

    def stack_snapshots(
        self, fs: FeatureSet, dates: list[dt.date], where: str, events: str, events_sql: str
    ) -> str:
        """The population's snapshots at ``dates`` over ``events`` (a temp view made here over
        ``events_sql``) stacked into a temp table (its name), by the hand-tuned build over one
        daily rollup; the few profiles the graph at a date builds differently from the final one
        are computed apart."""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {events} AS {events_sql}")
        reattributed = self.graph.reattributed(dates, events, fs.lookback_days) if self.graph else None
        build_snapshots(self.con, fs, dates, "snapshot_features", events, where, reattributed)
        return "snapshot_features"

    def training_rows(
        self, fs: FeatureSet, model: ModelConfig, cutoff: dt.date, choice: RowChoice | None = None
    ) -> TrainingRows:
        """Every stacked labelled snapshot of the model's population, or with ``choice`` the rows
        it chooses with their weights, their features built partition by partition
        (:mod:`propensity.features.build.training_sample`)."""
        if choice is not None:
            frame, dates, record = sampled_training_frame(self.con, fs, model, cutoff, choice, self.graph)
            return TrainingRows(frame, dates, {"engine": "duckdb", **record})
        relation, dates = training_frame(self, fs, model, cutoff)
        return TrainingRows(self.frame(relation), dates)

    def column_kinds(self, relation: str) -> dict[str, str]:
        """The kinds (number, string, boolean) rules compare, by column of ``relation``."""
        return segments_mod.column_kinds(self.con, relation)

    def frame(self, relation: str) -> pd.DataFrame:
        """A relation's rows on this machine."""
        return self.con.execute(relation).df()

    def oracle(self, frame: pd.DataFrame, outcome: OutcomeConfig) -> np.ndarray | None:
        """The true probabilities of a synthetic world's outcome for ``frame`` (None: not synthetic)."""
        if self.inputs.ground_truth is None:
            return None
        from propensity.features.synthetic.oracle import oracle_probabilities

        return oracle_probabilities(self.con, frame, outcome, self.inputs.ground_truth).to_numpy()


@dataclass
class Stitched:
    """Events staged and stitched on a connection: the temp tables ``stitched_events``,
    ``identity_map``, ``profiles`` ... and their counts."""

    con: duckdb.DuckDBPyConnection
    inputs: InputFiles
    counts: StagedEvents
    result: Any = None  # StitchResult, once stitched
    with_profiles: bool = False
    scratch: Scratch | None = None  # where the staged events are kept, removed on close
    events_view = "clean_events"
    lines_view = "stitched_events"
    identity_view = "identity_map"

    def rows(self, sql: str) -> list[tuple]:
        """The rows of a query over the staged tables."""
        return self.con.execute(sql).fetchall()

    def columns(self, view: str) -> list[str]:
        """A staged table's columns, in order."""
        return [r[0] for r in self.rows(f"DESCRIBE {view}")]

    @property
    def with_attributes(self) -> bool:
        """Whether profile attributes were staged (``profile_attributes``)."""
        return self.with_profiles

    def view(self, table: str) -> str:
        """The staged table an ingest table is copied from."""
        return {"events": "stitched_events", "quarantine": "bad_events"}.get(table, table)

    def write(self, sql: str, path: str) -> None:
        """A query's rows as one Parquet file (zstd)."""
        self.con.execute(f"COPY ({sql}) TO {sql_string(path)} (FORMAT parquet, COMPRESSION zstd)")

    def close(self) -> None:
        """Free the staged tables' memory and scratch files now rather than when collected."""
        self.con.close()
        if self.scratch is not None:
            self.scratch.remove()


class DuckDBEngine(SharedSteps):
    """The DuckDB side of every job (``engine.name: duckdb``)."""

    name = "duckdb"

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config

    # Events files, a folder of them, or an ingest directory (the ingest package's own reader).
    resolve_input = staticmethod(resolve_input)

    def read_text(self, path: str) -> str:
        """A small text file."""
        return Path(path).read_text()

    def open_stitched(self, inputs: InputFiles, stitched: Stitched) -> LoadedEvents:
        """Events staged and stitched on a connection as the views every later step reads."""
        con = stitched.con
        con.execute("CREATE VIEW events AS SELECT * EXCLUDE (_source_file, _source_row) FROM stitched_events")
        loaded = LoadedEvents(con=con, inputs=inputs, graph=IdentityGraph(con, self.config.identity))
        return tie_scratch(loaded, stitched.scratch)

    def stage_events(self, inputs: InputFiles, as_of: dt.date | None, settings: tuple) -> Stitched:
        """The events staged on a new connection (``features.ingest.staging.stage_events``), kept
        in a scratch database (under ``engine.temp_directory``) rather than in memory."""
        con, config = connect(self.config.engine), self.config
        stage = partial(stage_events, con, inputs, config.identity, as_of, *settings)
        scratch, counts = staged_in_scratch(con, config.engine, config.ingest.bucket_rows, stage)
        return Stitched(con, inputs, counts, scratch=scratch)

    def stitch(self, staged: Stitched, profiles: str | Path | None, on_bad_rows: OnBadRows) -> Stitched:
        """The profile attributes staged (when given), identities stitched into profiles, the
        events attributed and ``profiles`` built, on the staged events' connection."""
        con, identity = staged.con, self.config.identity
        staged.with_profiles = profiles is not None
        if staged.with_profiles:
            stage_profiles(con, Path(profiles), identity, on_bad_rows)
        staged.result = stitch_events(con, identity, staged.with_profiles)
        return staged

    def write_ingest_table(self, stitched: Stitched, table: IngestFile, path: str) -> None:
        """One ingest table; the events sorted a profile-key range at a time
        (:func:`~propensity.features.duckdb.ingest_write.write_events`)."""
        if table.name != "events" or stitched.scratch is None:
            super().write_ingest_table(stitched, table, path)
            return
        view = stitched.view("events")
        columns, bucket_rows = stitched.columns(view), self.config.ingest.bucket_rows
        write_events(stitched.con, table, view, columns, path, stitched.scratch.path, bucket_rows)

    def open_ingested(self, inputs: InputFiles, manifest: dict[str, Any]) -> LoadedEvents:
        """An ingest directory (either engine's) as views; ``profile_attributes`` when written."""
        con = connect(self.config.engine)
        directory = inputs.ingested
        for view in ingested_views((directory / "profile_attributes.parquet").exists()):
            path = directory / f"{view}.parquet"
            # The Spark ingest writes each table as a directory of parts.
            source = f"read_parquet({sql_string(str(path / '*.parquet' if path.is_dir() else path))})"
            columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            con.execute(f"CREATE VIEW {view} AS {ingested_view_sql(view, source, columns)}")
        graph = IdentityGraph(con, IdentityConfig.model_validate(manifest["identity"]))
        gt = manifest.get("ground_truth")
        if gt and Path(gt).is_dir():  # a generated world's truth, beside the raw events ingested
            inputs = replace(inputs, ground_truth=Path(gt))
        return LoadedEvents(con=con, inputs=inputs, manifest=manifest, graph=graph)

    @contextmanager
    def atomic_directory(self, path: str | Path, kind: str | None = None) -> Iterator[str]:
        """A new directory that replaces ``path`` whole when the block succeeds (a ``kind`` output:
        another kind of folder is refused)."""
        with atomic_path(path, kind=kind) as tmp:
            tmp.mkdir(parents=True)
            yield str(tmp)

    def write_text(self, text: str, path: str) -> None:
        """A small text file inside a directory being written atomically."""
        Path(path).write_text(text)

    def output_path(self, path: str | Path) -> str:
        """Where outputs go, as this engine spells paths."""
        return str(Path(path))

    def atomic_output(self, path: str | Path, kind: str | None = None):
        """A free temporary path that replaces ``path`` whole when the block succeeds."""
        return atomic_path(path, kind=kind)

    def write_features(self, events: LoadedEvents, relation: str, path: str, metadata: dict[str, Any]) -> str:
        """One Parquet file at ``path``, the registry facts in its metadata."""
        text = sql_string(json.dumps(metadata))
        events.con.execute(
            f"COPY ({relation}) TO {sql_string(path)} "
            f"(FORMAT parquet, COMPRESSION zstd, KV_METADATA {{propensity: {text}}})"
        )
        return f"read_parquet({sql_string(path)})"

    def score(self, events: LoadedEvents, plan: ScoringPlan, target: str) -> Scored:
        """The population scored in profile partitions, written ranked to ``target``."""
        return scoring.score(events.con, events.sources(plan.as_of), plan, Path(target), events.graph)

    def segment_rows(self, events: LoadedEvents, as_of: dt.date) -> segments_mod.OnConnection:
        """Qualification on the events' connection, the members' identities and profiles as of
        ``as_of``."""
        sources = events.sources(as_of)
        return segments_mod.OnConnection(events.con, sources.identity_map, sources.profiles)
