"""Feature tables and labels on Spark: the registry compiled with the SPARK dialect.

Nothing here declares a feature: :mod:`propensity.features.build.sql_compiler` compiles the same
registry (:mod:`propensity.features.build.registry`) to Spark SQL, and these functions run it over
the Spark temp views ``events`` and ``profiles`` (:func:`register`):

* :func:`snapshot` - one as-of date straight off the events (``snapshot_sql``);
* :func:`snapshots` - stacked as-of dates over a daily rollup (``rollup_sql`` +
  ``snapshots_sql``), the engine-neutral form of the stacked build;
* :func:`stacked_snapshots` - a model's population over its training dates (labelled, with
  nothing at or after the cutoff visible, by :mod:`propensity.features.build.model_frames`);
* :func:`sample_by_label` - the rows one machine trains on: the same share of each label.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from propensity.features.build.event_queries import data_end_sql, day_after, learn_categories_sql
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.sql_compiler import rollup_sql, snapshot_sql, snapshots_sql
from propensity.features.spark.session import to_pandas
from propensity.features.sql import SPARK

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from propensity.features.spark.as_of import SparkIdentityGraph


def profile_columns(spark: SparkSession, profiles: str) -> list[str]:
    """The columns of the ``profiles`` view the compiled SQL joins (none when it does not exist:
    the compiler then joins no profile attributes, as on DuckDB)."""
    return spark.table(profiles).columns if spark.catalog.tableExists(profiles) else []


def register(events: DataFrame, profiles: DataFrame | None = None) -> None:
    """Make ``events`` (and ``profiles``) the temp views the compiled SQL reads."""
    events.createOrReplaceTempView("events")
    spark = events.sparkSession
    if profiles is not None:
        profiles.createOrReplaceTempView("profiles")
    else:
        spark.catalog.dropTempView("profiles")


def duckdb_to_spark(sql: str) -> str:
    """Query-shaped DuckDB SQL spelled for Spark (sqlglot): one text for both engines."""
    import sqlglot

    return sqlglot.transpile(sql, read="duckdb", write="spark")[0]


def learn_categories(spark: SparkSession, before: dt.date, limit: int, events: str = "events") -> list[str]:
    """The most viewed and bought categories before ``before`` (``event_queries.learn_categories``)."""
    rows = spark.sql(duckdb_to_spark(learn_categories_sql(before, limit, events))).collect()
    return [r[0] for r in rows]


def data_end(spark: SparkSession, events: str = "events") -> dt.date:
    """The day after the last event: the default cutoff (``event_queries.data_end``)."""
    return day_after(spark.sql(duckdb_to_spark(data_end_sql(events))).first()[0])


def snapshot(
    spark: SparkSession,
    fs: FeatureSet,
    as_of: dt.date,
    where: str | None = None,
    plan: str = "rollup",
    events: str = "events",
    profiles: str = "profiles",
) -> DataFrame:
    """The feature table at ``as_of`` for every profile active in the lookback, from the views
    ``events`` and ``profiles`` (those of the identity graph at ``as_of``:
    :meth:`SparkIdentityGraph.sources`).

    ``plan``: ``rollup`` (the default on Spark: the lookback's events condensed per profile
    and day, then ``snapshots_sql`` for the one date: no ``count(DISTINCT)``, which Spark
    answers by copying every row once per distinct aggregate), or ``windows`` / ``buckets`` /
    ``auto`` (``snapshot_sql`` straight off the events). All give the same values.
    """
    if plan != "rollup":
        columns = profile_columns(spark, profiles)
        return spark.sql(snapshot_sql(fs, as_of, columns, SPARK, events, where, plan, profiles=profiles))
    lowest = as_of - dt.timedelta(days=fs.lookback_days)
    tag = as_of.strftime("%Y%m%d")
    spark.sql(
        f"SELECT * FROM {events} WHERE timestamp < TIMESTAMP '{as_of} 00:00:00' "
        f"AND timestamp >= TIMESTAMP '{lowest} 00:00:00'"
    ).createOrReplaceTempView(f"lookback_events_{tag}")
    return snapshots(
        spark,
        fs,
        [as_of],
        where,
        events=f"lookback_events_{tag}",
        rollup=f"lookback_rollup_{tag}",
        profiles=profiles,
    )


def snapshots(
    spark: SparkSession,
    fs: FeatureSet,
    as_ofs: list[dt.date],
    where: str | None = None,
    events: str = "events",
    rollup: str = "daily_rollup",
    profiles: str = "profiles",
) -> DataFrame:
    """Stacked feature tables for several as-of dates, from one daily rollup of ``events``
    (every date sees the same profiles: for profiles as of each date, stack :func:`snapshot`)."""
    if not as_ofs:
        raise ValueError("snapshots needs at least one as-of date")
    spark.sql(rollup_sql(fs, SPARK, events)).createOrReplaceTempView(rollup)
    return spark.sql(
        snapshots_sql(fs, as_ofs, profile_columns(spark, profiles), SPARK, rollup, where, profiles=profiles)
    )


def stacked_snapshots(
    spark: SparkSession, fs: FeatureSet, dates: list[dt.date], where: str, graph: SparkIdentityGraph
) -> DataFrame:
    """The population's snapshots at ``dates``, stacked: each date's events (all before it) as
    the identity graph at that date saw them (``stacked_build.build_snapshots`` on Spark)."""
    graph.prepare(dates)
    stacked = None
    for as_of in dates:
        sources = graph.sources(as_of)
        table = snapshot(spark, fs, as_of, where=where, events=sources.events, profiles=sources.profiles)
        # Materialised date by date: a population is small beside the events, and the stacked
        # query keeps a plan of one scan instead of one compiled snapshot per date.
        table = table.localCheckpoint()
        stacked = table if stacked is None else stacked.unionByName(table)
    return stacked


@dataclass(frozen=True)
class TrainingSample:
    """The rows one machine trains on, and how they were drawn from the stacked snapshots."""

    frame: pd.DataFrame
    rows_available: int
    positives_available: int
    fraction: float  # the share of each label kept (1.0: every row)

    def describe(self) -> dict[str, float | int]:
        """For the run's record: rows available and kept, and the share kept."""
        return {
            "sample_rows_available": self.rows_available,
            "sample_positives_available": self.positives_available,
            "sample_rows": len(self.frame),
            "sample_fraction": self.fraction,
        }


def sample_by_label(frame: DataFrame, max_rows: int, seed: int) -> TrainingSample:
    """At most ``max_rows`` rows, the same share of each label (so the base rate, and with it
    calibration, is the one of all rows), as a pandas frame ordered by (as_of, profile_id).

    Rows are kept by a hash of (seed, profile_id, as_of): the same inputs and seed give the
    same sample. Each label's quota is filled exactly: a hash threshold a little above the
    share narrows the rows on the cluster, the driver keeps the lowest hashes.
    """
    # Read twice (label counts, then the rows): held once, not computed twice.
    frame = frame.persist()
    try:
        return _sample(frame, max_rows, seed)
    finally:
        frame.unpersist()


def _sample(frame: DataFrame, max_rows: int, seed: int) -> TrainingSample:
    from pyspark.sql import functions as F  # noqa: N812

    counts = {row["label"]: int(row["count"]) for row in frame.groupBy("label").count().collect()}
    total, positives = sum(counts.values()), counts.get(1, 0)
    if total <= max_rows:
        kept = to_pandas(frame.orderBy("as_of", "profile_id"))
        return TrainingSample(kept, total, positives, 1.0)
    fraction = max_rows / total
    # Each label its share, rounded; the last label takes what is left, so the rows add up to
    # max_rows exactly.
    labels = sorted(counts)
    quotas = {label: round(counts[label] * fraction) for label in labels[:-1]}
    quotas[labels[-1]] = min(counts[labels[-1]], max_rows - sum(quotas.values()))
    # 2**-52 resolution; the margin (5 standard deviations plus a little) makes a shortfall
    # practically impossible, and it is checked.
    unit = (
        F.xxhash64(F.lit(seed), "profile_id", F.col("as_of").cast("string")).bitwiseAND((1 << 52) - 1)
    ) / float(1 << 52)
    thresholds = {
        label: min(1.0, fraction + 5 * (fraction * (1 - fraction) / max(n, 1)) ** 0.5 + 1e-6)
        for label, n in counts.items()
    }
    keep = F.lit(False)
    for label, threshold in thresholds.items():
        keep = keep | ((F.col("label") == label) & (F.col("_u") < threshold))
    candidates = to_pandas(frame.withColumn("_u", unit).where(keep))
    parts = []
    for label, quota in quotas.items():
        rows = candidates[candidates["label"] == label].sort_values(["_u", "as_of", "profile_id"])
        if len(rows) < quota:
            raise RuntimeError(f"sample_by_label: {len(rows)} candidates for a quota of {quota}")
        parts.append(rows.head(quota))
    kept = pd.concat(parts).drop(columns="_u").sort_values(["as_of", "profile_id"]).reset_index(drop=True)
    return TrainingSample(kept, total, positives, fraction)
