"""Scoring on DuckDB, hand-tuned: the population built in profile partitions, streamed in Arrow
batches through a prefetch thread to the scorer, then ranked and written in one partition file.

Peak memory is bounded by one profile partition's feature build and one batch, not by the
population. With many partitions of a narrow build the events are read once: those of the lookback, with only
the columns the features read, are split into one Parquet folder per partition, which each
partition reads alone. The scored rows are ranked and written by :mod:`.ranked_write`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from propensity.core.io import output_lock, scratch_dir
from propensity.core.score_table import histogram_bins
from propensity.features.build.event_queries import namespaces_sql, representatives_sql
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.rules import column_name
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import arrow_batches, relation_columns
from propensity.features.duckdb import score_build
from propensity.features.duckdb.ranked_write import UnrankedRun
from propensity.features.duckdb.score_build import stacked_build_applies
from propensity.features.engine import Scored, ScoringPlan
from propensity.features.identity.as_of import AsOfSources, IdentityGraph
from propensity.features.sql import sql_ident, sql_string

ELIGIBLE = "__in_population"
PART = "__partition"
PARTITION_FLUSH_ROWS = 122_880
# Writing each partition's events apart costs about as much as reading all the events 6 times
# (150k profiles, 35 features: 8.7 s against 1.4 s a scan; the Parquet write is most of it), so it
# pays from 7 partitions on, and only for narrow builds: at 150k profiles and 8 partitions
# (benchmarks/score_partitions.py), 35 features (16 measures) took 0.66x the time of a scan of
# all events per partition at load 4, 0.80-0.90x at load 15; all 243 features (46 measures)
# took 1.24x at load 5 (building each partition from its files was no faster than from all
# events), so wider builds scan all events per partition.
SPLIT_FROM_PARTITIONS = 7
SPLIT_MAX_MEASURES = 16
T = TypeVar("T")

# What one partition of the feature build holds: 125,000 profiles of the default registry's 232
# features. A profile also costs about 64 features' worth whatever the model reads (its id, its
# daily rollup): measured at 1M profiles, 3 partitions of a 41-feature model peak at 3.7 GiB,
# 2 at 4.2 GiB; 8 of a 195-feature model at 3.8 GiB.
PROFILE_OVERHEAD_FEATURES = 64
CELLS_PER_PARTITION = 125_000 * (232 + PROFILE_OVERHEAD_FEATURES)


def prefetched(items: Iterator[T], depth: int = 2, on_stop: Callable[[], None] | None = None) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer: DuckDB
    builds the next features while this thread predicts and explains, so either fills the cores
    the other leaves idle. A producer's exception is raised here. When the consumer stops early,
    ``on_stop`` (e.g. the connection's ``interrupt``) cuts a long call short and the producer
    is joined before this returns, so nothing else uses the connection meanwhile."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put("item", item)
                if stop.is_set():
                    return
            put("done", None)
        except BaseException as error:  # handed to the consumer, raised there
            put("error", error)

    producer = threading.Thread(target=produce, name="propensity-feature-batches", daemon=True)
    producer.start()
    finished = False
    try:
        while True:
            kind, value = handoff.get()
            if kind == "done":
                finished = True
                return
            if kind == "error":
                finished = True
                raise value
            yield value
    finally:
        stop.set()
        if not finished and on_stop is not None:
            on_stop()
        producer.join()


def partitions_for(con: duckdb.DuckDBPyConnection, profiles: str, features: int) -> int:
    """Profile partitions of the feature build when the config leaves it open: one per
    CELLS_PER_PARTITION profile x (features + overhead) values. DuckDB's wide aggregates run
    faster, and in far less memory, over a few hundred thousand profiles at a time than over
    millions; a model that reads fewer features takes more profiles at a time, since under
    SPLIT_FROM_PARTITIONS each partition query scans all the events."""
    count = con.execute(f"SELECT count(*) FROM {profiles}").fetchall()[0][0]
    cells = int(count) * (features + PROFILE_OVERHEAD_FEATURES)
    return max(1, -(-cells // CELLS_PER_PARTITION))


def _identities_sql(con: duckdb.DuckDBPyConnection, identity_map: str, namespaces) -> tuple[str, list[str]]:
    """One representative identity per namespace and profile, for the namespaces present."""
    present = {r[0] for r in con.execute(namespaces_sql(identity_map)).fetchall()}
    columns = [c for c in namespaces if c in present]
    return representatives_sql(identity_map, columns), columns


def _model_columns(plan: ScoringPlan) -> str:
    """The model's feature columns the scoring query reads: those a tree splits on (the others
    are added as null columns to the fetched rows, :func:`_with_unused`)."""
    return "".join(f", f.{sql_ident(name)}" for name in plan.feature_names if name not in plan.unused)


UNUSED_TYPES = {"double": pa.float64(), "string": pa.string()}  # (of unused_feature_types)


def _with_unused(table: pa.Table, plan: ScoringPlan) -> pa.Table:
    """``table`` with a column of typed nulls for each model feature no tree splits on: what
    DuckDB would hand over for the query's typed NULLs, had it filled and exported each."""
    nulls = {kind: pa.nulls(table.num_rows, arrow_type) for kind, arrow_type in UNUSED_TYPES.items()}
    for name in plan.feature_names:
        if name in plan.unused:  # one array of each type, shared (arrays never change)
            table = table.append_column(name, nulls[plan.unused[name]])
    return table


def read_features(plan: ScoringPlan) -> FeatureSet:
    """The features a scoring run reads: the model's (but those no tree splits on) and the
    population rule's, with only the measures they need."""
    names = {*(n for n in plan.feature_names if n not in plan.unused), *plan.population.columns}
    chosen = plan.fs.select(include=sorted(names)) if names else plan.fs
    # Profile attributes alone need no measure, but the rows are still the profiles with events.
    return chosen if chosen.measures else plan.fs


def event_columns(fs: FeatureSet) -> list[str]:
    """The event columns a feature build of ``fs`` reads: profile, time and what its measures
    read (:func:`.sql_compiler.snapshot_sql` reads no other)."""
    read = {
        column_name(c)
        for m in fs.measures.values()
        for c in sqlglot.parse_one(m.sql, read="duckdb").find_all(exp.Column)
    }
    return ["profile_id", "timestamp", *sorted(read - {"profile_id", "timestamp"})]


def partition_events(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    as_of: dt.date,
    events: str,
    partitions: int,
    directory: Path,
) -> Callable[[int], str | None]:
    """The one scan of the events of a build in profile partitions: the events of the lookback
    before ``as_of``, with only the columns ``fs`` reads (:func:`event_columns`), written under
    ``directory`` in one Parquet folder per partition (``hash(profile_id) % partitions``, so a
    profile is never split). Returns the relation of one partition's events (None: it has none),
    which :func:`.sql_compiler.snapshot_sql` reads as it would the events: each partition reads
    its own events instead of rescanning all of them. The write holds a few hundred MiB of
    buffers (PARTITION_FLUSH_ROWS), whatever the number of events."""
    columns = ", ".join(sql_ident(c) for c in event_columns(fs))
    lowest = as_of - dt.timedelta(days=fs.lookback_days)
    # Rows a partition's writer buffers before it writes them out (DuckDB's default: 524,288 per
    # partition and thread): at 150k profiles and 8 partitions, 122,880 took 6.6 s and 630 MiB,
    # the default 8.4 s and 930 MiB.
    con.execute(f"SET partitioned_write_flush_threshold = {PARTITION_FLUSH_ROWS}")
    try:
        con.execute(f"""
            COPY (
                SELECT hash(profile_id) % {partitions} AS {PART}, {columns} FROM {events}
                WHERE timestamp < TIMESTAMP '{as_of} 00:00:00' AND timestamp >= TIMESTAMP '{lowest} 00:00:00'
            ) TO {sql_string(str(directory))} (FORMAT parquet, PARTITION_BY ({PART}))
        """)
    finally:
        con.execute("RESET partitioned_write_flush_threshold")

    def relation(part: int) -> str | None:
        folder = directory / f"{PART}={part}"
        if not folder.is_dir():
            return None
        files = sql_string(str(folder / "*.parquet"))
        return f"(SELECT {columns} FROM read_parquet({files}, hive_partitioning = false))"

    return relation


def partition_relations(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    as_of: dt.date,
    events: str,
    partitions: int,
    directory: Path,
) -> list[str]:
    """The events each partition builds its features from: all of them for one partition; each
    partition's own (:func:`partition_events`) when they are enough, and the build narrow
    enough, to repay the split; else the events of its range of profiles (:func:`profile_ranges`:
    of profile-sorted events, only its row groups are read)."""
    if partitions >= SPLIT_FROM_PARTITIONS and len(fs.measures) <= SPLIT_MAX_MEASURES:
        events_of = partition_events(con, fs, as_of, events, partitions, directory)
        return [e for e in map(events_of, range(partitions)) if e is not None]
    if partitions == 1:
        return [events]
    return [f"(SELECT * FROM {events} WHERE {where})" for where in profile_ranges(con, partitions)]


def profile_ranges(con: duckdb.DuckDBPyConnection, partitions: int, profiles: str = "profiles") -> list[str]:
    """Conditions that split ``profile_id`` into ``partitions`` ranges of about as many of
    ``profiles`` each (every id, of those or not, in exactly one). An ingest writes the events
    sorted by profile (``features.ingest.manifest``), so the Parquet reader skips the row
    groups outside a range by their min/max: each partition reads its own events, not all."""
    fractions = ", ".join(str(i / partitions) for i in range(1, partitions))
    cuts = (
        con.execute(f"SELECT quantile_disc(profile_id, [{fractions}]) FROM {profiles}").fetchall()[0][0] or []
    )
    cuts = sorted(set(cuts))
    bounds = [None, *cuts, None]
    conditions = []
    for low, high in itertools.pairwise(bounds):
        parts = ([f"profile_id >= {sql_string(low)}"] if low is not None else []) + (
            [f"profile_id < {sql_string(high)}"] if high is not None else []
        )
        conditions.append(" AND ".join(parts) or "TRUE")
    return conditions


def _rows_sql(
    con, plan: ScoringPlan, sources: AsOfSources, fs: FeatureSet, identities
) -> Callable[[str], str]:
    """The query of the feature rows of the profiles of ``events`` (all, or one partition's), streamed
    in one pass: each row once with its population flag and only the columns the model reads, in no
    particular order (the partition is sorted when it is written)."""
    columns = relation_columns(con, sources.profiles)

    def rows_sql(events: str) -> str:
        features_sql = snapshot_sql(
            fs, plan.as_of, columns, events=events, profiles=sources.profiles, ordered=False
        )
        return _scored_rows_sql(plan, features_sql, identities)

    return rows_sql


def _scored_rows_sql(plan: ScoringPlan, features_sql: str, identities) -> str:
    """``features_sql``'s rows with the population flag, only the columns the model reads, and
    the profile's representative identities."""
    identities_sql, identity_columns = identities
    return f"""
        SELECT f.profile_id{_model_columns(plan)}, f.{ELIGIBLE}
               {"".join(f", i.{sql_ident(c)}" for c in identity_columns)}
        FROM (
            SELECT *, coalesce(({plan.population.sql("duckdb")}), false) AS {ELIGIBLE}
            FROM ({features_sql})
        ) f LEFT JOIN ({identities_sql}) i USING (profile_id)
    """


def _feature_tables(
    con: duckdb.DuckDBPyConnection,
    sources: AsOfSources,
    plan: ScoringPlan,
    fs: FeatureSet,
    identities,
    partitions: int,
    graph: IdentityGraph | None,
    scratch: Path,
) -> Iterator[pa.Table]:
    """The scored rows, partition after partition (each a table, or a stream of batches): by the
    stacked build over profile-key ranges on ingested events (:mod:`.score_build`), else by the
    feature SQL over each partition's events."""
    if stacked_build_applies(con):
        rows_sql = _scored_rows_sql(plan, f"SELECT * FROM {score_build.FEATURES}", identities)
        yield from score_build.partition_tables(con, fs, plan.as_of, graph, partitions, rows_sql)
        return
    rows_sql = _rows_sql(con, plan, sources, fs, identities)
    for events in partition_relations(con, fs, plan.as_of, sources.events, partitions, scratch):
        for batch in arrow_batches(con, rows_sql(events), plan.chunk_rows):
            yield pa.Table.from_batches([batch])


def score(
    con: duckdb.DuckDBPyConnection,
    sources: AsOfSources,
    plan: ScoringPlan,
    target: Path,
    graph: IdentityGraph | None = None,
) -> Scored:
    """Score the population at ``plan.as_of`` and write ``target/part-0.parquet`` ranked, whole or
    not at all; ``graph``: the identity graph the events were loaded with."""
    identities = _staged_identities(con, sources.identity_map, plan.identity_namespaces)
    partitions = plan.partitions or partitions_for(
        con, sources.profiles, len(plan.feature_names) - len(plan.unused)
    )
    fs = read_features(plan)
    # The lock is held from the first temp file to the partition's replace; temps stay outside
    # the scores folder, where no reader globs them.
    root = target.parent.parent
    with output_lock(target, root=root, kind="scores"), scratch_dir(target, root=root) as tmp:
        run = UnrankedRun(Path(tmp) / "unranked.arrow")
        tables = _feature_tables(con, sources, plan, fs, identities, partitions, graph, Path(tmp) / "events")
        for table in prefetched(tables, depth=1, on_stop=con.interrupt):
            run.add(_scored_partition(plan, table, identities[1], run))
        bucket_sizes = run.write_ranked(con, target)
    con.execute(f"DROP TABLE IF EXISTS {IDENTITIES}")
    if plan.progress is not None:
        plan.progress(run.scored, run.scored)
    scores = run.scores()
    histogram = np.histogram(scores, bins=histogram_bins())[0].tolist() if run.scored else []
    return Scored(run.profiles, run.eligible, run.scored, bucket_sizes, histogram, scores)


IDENTITIES = "score_identities"  # the temp table of each profile's representative identities


def _staged_identities(
    con: duckdb.DuckDBPyConnection, identity_map: str, namespaces
) -> tuple[str, list[str]]:
    """Each profile's representative identities, chosen once (not once a partition) into the temp
    table :data:`IDENTITIES`: the query reading it and the identity columns."""
    sql, columns = _identities_sql(con, identity_map, namespaces)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {IDENTITIES} AS {sql}")
    return f"SELECT * FROM {IDENTITIES}", columns


def _scored_partition(
    plan: ScoringPlan, table: pa.Table, identity_columns: list[str], run: UnrankedRun
) -> pa.Table | None:
    """One partition's feature rows scored in ``plan.chunk_rows`` chunks, the eligible ones only,
    sorted by profile (None: none eligible); ``run``'s counts and ``plan.progress`` follow."""
    run.profiles += table.num_rows
    eligible = table.column(ELIGIBLE)
    # The wide feature rows are copied only when someone is left out (a filter copies them all).
    if eligible.null_count or not pc.all(eligible).as_py():
        table = table.filter(eligible)
    table = _with_unused(table, plan)
    run.eligible += table.num_rows
    parts = []
    for start in range(0, table.num_rows, plan.chunk_rows):
        parts.append(plan.scorer(table.slice(start, plan.chunk_rows), identity_columns))
        run.scored += parts[-1].num_rows
        if plan.progress is not None:
            plan.progress(run.scored, None)
    if not parts:
        return None
    # Sorted here, the scored columns only (not the wide feature rows): partitions of the
    # stacked build then make one ascending run (score_build.in_profile_order).
    rows = pa.concat_tables(parts)
    return rows.take(pc.sort_indices(rows.column("profile_id")))
