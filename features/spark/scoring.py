"""Scoring on Spark: the model's scorer applied on the executors.

Every Arrow batch of the population goes through the job's scorer (``models.scoring.score_batch``)
inside ``mapInArrow``: the same probabilities, scores, buckets and factors as on DuckDB, batch
for batch. The percentile (1-100 within the scored population) is ``ceil(100 * cume_dist)``
computed over the whole population without a one-partition window
(:func:`propensity.features.spark.ordering.cumulative_counts`). The partition is replaced
whole, on any Hadoop path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from propensity.core.score_table import BUCKETS, PERCENTILE, batch_schema
from propensity.features.build.event_queries import namespaces_sql, representatives_sql
from propensity.features.engine import Scored, Scorer, ScoringPlan
from propensity.features.identity.as_of import AsOfSources
from propensity.features.spark import features as sf
from propensity.features.spark.ordering import cumulative_counts
from propensity.features.spark.session import atomic_output, functions, write_parquet

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

# Histograms of huge populations are drawn from a sample of this many scores (the counts
# logged beside them are exact).
HISTOGRAM_SAMPLE = 200_000


def _on_executors(scorer: Scorer, identity_columns: list[str]):
    """The function ``mapInArrow`` runs on each executor: Arrow batches in, score batches out."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield from scorer(batch, identity_columns).to_batches()

    return score


def _model_inputs(features: DataFrame, plan: ScoringPlan) -> DataFrame:
    """The columns scoring reads: the profile, what the population rule reads and the features the
    model's trees split on; the others as typed NULLs, so Spark prunes their aggregates, as the
    DuckDB job does."""
    F = functions()
    unused = plan.unused
    read = {"profile_id", *plan.population.columns, *(c for c in plan.feature_names if c not in unused)}
    keep = [c for c in features.columns if c in read]
    nulls = {c: F.lit(None).cast(kind) for c, kind in unused.items() if c not in keep}
    return features.select(*keep).withColumns(nulls)


def _identities(spark: SparkSession, identity_map: str, namespaces) -> tuple[DataFrame, list[str]]:
    """One representative identity per namespace and profile, for the namespaces present (the
    DuckDB engine's queries, transpiled)."""
    present = {r[0] for r in spark.sql(sf.duckdb_to_spark(namespaces_sql(identity_map))).collect()}
    columns = [c for c in namespaces if c in present]
    return spark.sql(sf.duckdb_to_spark(representatives_sql(identity_map, columns))), columns


def _spark_schema(identity_columns: list[str], uplift: bool = False):
    """The score batch's Spark schema, from the one Arrow declaration (core.score_table)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(batch_schema(identity_columns, uplift=uplift))


def _ranked(scored: DataFrame) -> tuple[DataFrame, int]:
    """``scored`` with its percentile, placed just before ``scored_at`` as the contract orders it,
    and how many rows were scored."""
    F = functions()
    cumulative, total = cumulative_counts(scored, "probability")
    joined = scored.join(F.broadcast(cumulative) if total < 1_000_000 else cumulative, "probability")
    percentile = F.greatest(
        F.lit(1.0), F.ceil(F.lit(100.0) * (F.col("cumulative") / F.lit(float(max(total, 1)))))
    )
    ranked = joined.select(
        *[c for c in scored.columns if c != "scored_at"],
        percentile.cast("smallint").alias(PERCENTILE.name),
        "scored_at",
    )
    return ranked, total


def score(spark: SparkSession, sources: AsOfSources, plan: ScoringPlan, target: str) -> Scored:
    """Score the population at ``plan.as_of`` on the executors and write ``target`` (Parquet parts
    sorted by profile_id) whole or not at all. ``progress`` hears once, at the end."""
    F = functions()
    snapshot = sf.snapshot(spark, plan.fs, plan.as_of, events=sources.events, profiles=sources.profiles)
    features = _model_inputs(snapshot, plan).persist()
    where = F.expr(plan.population.sql("spark"))
    counts = features.agg(F.count(F.lit(1)), F.count(F.when(where, 1))).first()
    profiles, eligible = int(counts[0]), int(counts[1])
    identities, identity_columns = _identities(spark, sources.identity_map, plan.identity_namespaces)
    rows = features.where(where).join(identities, "profile_id", "left")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(plan.chunk_rows))
    scorer = _on_executors(plan.scorer, identity_columns)
    scored = rows.mapInArrow(scorer, _spark_schema(identity_columns, plan.uplift)).persist()
    ranked, total = _ranked(scored)
    root = target.rstrip("/").rsplit("/", 2)[0]  # scores/model=<name>/as_of=<date> -> scores
    with atomic_output(spark, target, root=root, kind="scores") as tmp:
        write_parquet(ranked.orderBy("profile_id"), tmp)
    sizes = {r["bucket"]: int(r["count"]) for r in scored.groupBy("bucket").count().collect()}
    bucket_sizes = {b: sizes.get(b, 0) for b in BUCKETS} if total else {}
    histogram, sample = _score_histogram(scored), _score_sample(scored, total)
    scored.unpersist()
    features.unpersist()
    if plan.progress is not None:
        plan.progress(total, eligible)
    return Scored(profiles, eligible, total, bucket_sizes, histogram if total else [], sample)


def _score_histogram(scored: DataFrame) -> list[int]:
    """Counts of scores in [0, 5), [5, 10), ... [95, 100] (``numpy.histogram``'s bins)."""
    F = functions()
    bins = F.least(F.floor(F.col("score") / 5), F.lit(19)).alias("bin")
    counts = {int(r["bin"]): int(r["count"]) for r in scored.groupBy(bins).count().collect()}
    return [counts.get(b, 0) for b in range(20)]


def _score_sample(scored: DataFrame, total: int) -> np.ndarray:
    fraction = min(1.0, HISTOGRAM_SAMPLE / max(total, 1))
    sample = (
        scored.select("score")
        if fraction >= 1.0
        else scored.select("score").sample(fraction=fraction, seed=0)
    )
    return np.asarray(sample.toArrow()["score"].to_numpy(), dtype=float)
