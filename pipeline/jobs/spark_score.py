"""The score job on Apache Spark: a registered model applied on the executors.

The model's population at ``as_of`` is built on Spark (:mod:`propensity.features.spark.features`),
then every Arrow batch goes through :func:`propensity.models.scoring.score_batch` inside
``mapInArrow`` on the executors: the same probabilities, scores, buckets and factors as the
DuckDB job (:mod:`propensity.pipeline.jobs.score`), batch for batch. The percentile (1-100
within the scored population) is ``ceil(100 * cume_dist)`` computed over the whole population
without a one-partition window (:func:`propensity.features.spark.ordering.cumulative_counts`).
The partition ``OUT/model=<name>/as_of=<date>/`` is replaced whole, on any Hadoop path.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.spark import features as sf
from propensity.features.spark.ordering import cumulative_counts
from propensity.features.spark.session import atomic_output, hadoop_path, spark_session, write_parquet
from propensity.models import tracking
from propensity.models.scoring import score_batch
from propensity.pipeline.jobs.score import (
    SCORE_IDENTITY_COLUMNS,
    Progress,
    ScoreRun,
    checked_as_of,
    model_population,
    unused_feature_types,
)
from propensity.pipeline.jobs.spark import feature_set, load_events

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from propensity.features.build.rules import Rule
    from propensity.models.estimator import PropensityModel

SCORE_SCHEMA = (
    "profile_id string, model string, model_version string, as_of date, probability double, "
    "score smallint, bucket string, "
    "factors array<struct<feature: string, label: string, value: string, impact: double>>, "
    "scored_at timestamp"
)
# Histograms of huge populations are drawn from a sample of this many scores (the counts
# logged beside them are exact).
HISTOGRAM_SAMPLE = 200_000


def _scorer(
    model: PropensityModel,
    model_name: str,
    version: str,
    as_of: dt.date,
    factors: int,
    scored_at: dt.datetime,
    identity_columns: list[str],
):
    """The function ``mapInArrow`` runs on each executor: Arrow batches in, score batches out."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = score_batch(
                model,
                batch,
                model_name=model_name,
                model_version=version,
                as_of=as_of,
                factors=factors,
                scored_at=scored_at,
                identity_columns=identity_columns,
            )
            yield from table.to_batches()

    return score


def _model_inputs(features: DataFrame, model: PropensityModel, population: Rule) -> DataFrame:
    """The columns scoring reads: the profile, what the population rule reads and the features the
    model's trees split on; the others as typed NULLs (``unused_feature_types``), so Spark prunes
    their aggregates, as the DuckDB job does."""
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention

    unused = unused_feature_types(model)
    read = {"profile_id", *population.columns, *(c for c in model.feature_names if c not in unused)}
    keep = [c for c in features.columns if c in read]
    nulls = {c: F.lit(None).cast(kind) for c, kind in unused.items() if c not in keep}
    return features.select(*keep).withColumns(nulls)


def _identities(identity_map: DataFrame) -> tuple[DataFrame, list[str]]:
    """One representative identity per namespace and profile (the smallest value)."""
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention

    present = {r[0] for r in identity_map.select("namespace").distinct().collect()}
    columns = [c for c in SCORE_IDENTITY_COLUMNS if c in present]
    return (
        identity_map.groupBy("profile_id").agg(
            *(F.min(F.when(F.col("namespace") == c, F.col("value"))).alias(c) for c in columns)
        ),
        columns,
    )


def score_model(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    out: str | Path | None = None,
    alias: str | None = None,
    version: str | None = None,
    factors: int | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
) -> ScoreRun:
    """Score the model's population at ``as_of`` on Spark (``score_jobs.score_model``).

    Writes ``OUT/model=<name>/as_of=<date>/`` (Parquet parts sorted by profile_id; ``OUT``
    defaults to ``WORK_DIR/scores``) whole or not at all, and logs a scoring run to MLflow.
    ``chunk_rows`` is the Arrow batch each executor scores at once; ``progress`` hears once,
    at the end (the executors do not report rows as they go).
    """
    from pyspark.sql import functions as F  # noqa: N812

    started = time.perf_counter()
    if version and alias:
        raise UserError("give --version or --alias, not both")
    client = tracking.configure(config)
    model, mv = tracking.load_propensity_model(client, model_name, version=version, alias=alias)
    spark = spark_session(config.engine)
    loaded = load_events(spark, events, config)
    as_of = checked_as_of(as_of, sf.data_end(spark))
    fs = feature_set(spark, config, before=as_of, categories=model.metadata.get("categories"))
    population = model_population(model, model_name, str(mv.version), fs, config)
    factors = config.scoring.factors if factors is None else factors
    if factors < 0:
        raise UserError(f"--factors must be 0 or more, got {factors}")
    out_root = hadoop_path(out) if out is not None else str(Path(config.work_dir) / "scores")
    target = f"{out_root.rstrip('/')}/model={model_name}/as_of={as_of}"

    # Profiles as the identity graph knew them at as_of, as the DuckDB job reads them.
    sources = loaded.sources(as_of)
    features = _model_inputs(
        sf.snapshot(spark, fs, as_of, events=sources.events, profiles=sources.profiles), model, population
    ).persist()
    where = F.expr(population.sql("spark"))
    counts = features.agg(F.count(F.lit(1)), F.count(F.when(where, 1))).first()
    profiles, eligible = int(counts[0]), int(counts[1])
    identities, identity_columns = _identities(spark.table(sources.identity_map))
    rows = features.where(where).join(identities, "profile_id", "left")
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_rows or config.scoring.chunk_rows)
    )
    schema = SCORE_SCHEMA + "".join(f", {c} string" for c in identity_columns)
    scorer = _scorer(model, model_name, str(mv.version), as_of, factors, scored_at, identity_columns)
    scored = rows.mapInArrow(scorer, schema).persist()
    cumulative, total = cumulative_counts(scored, "probability")
    ranked = scored.join(F.broadcast(cumulative) if total < 1_000_000 else cumulative, "probability").select(
        *[c for c in scored.columns if c != "scored_at"],
        F.greatest(F.lit(1.0), F.ceil(F.lit(100.0) * (F.col("cumulative") / F.lit(float(max(total, 1))))))
        .cast("smallint")
        .alias("percentile"),
        "scored_at",
    )
    with atomic_output(spark, target, root=out_root, kind="scores") as tmp:
        write_parquet(ranked.orderBy("profile_id"), tmp)
    sizes = {r["bucket"]: int(r["count"]) for r in scored.groupBy("bucket").count().collect()}
    bucket_sizes = {b: sizes.get(b, 0) for b in ("high", "medium", "low")} if total else {}
    histogram = _score_histogram(scored)
    sample = _score_sample(scored, total)
    scored.unpersist()
    features.unpersist()
    if progress is not None:
        progress(total, eligible)
    run_id = _log_scoring_run(
        model_name, str(mv.version), as_of, target, profiles, eligible, total, bucket_sizes, histogram, sample
    )
    return ScoreRun(
        model=model_name,
        version=str(mv.version),
        as_of=as_of,
        out=Path(target),
        profiles=profiles,
        eligible=eligible,
        scored=total,
        bucket_sizes=bucket_sizes,
        run_id=run_id,
        seconds=time.perf_counter() - started,
    )


def _score_histogram(scored: DataFrame) -> list[int]:
    """Counts of scores in [0, 5), [5, 10), ... [95, 100] (``numpy.histogram``'s bins)."""
    from pyspark.sql import functions as F  # noqa: N812

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


def _log_scoring_run(
    model_name: str,
    version: str,
    as_of: dt.date,
    target: str,
    profiles: int,
    eligible: int,
    scored: int,
    sizes: dict[str, int],
    histogram: list[int],
    sample: np.ndarray,
) -> str:
    from propensity.models.plots import save_histogram

    mlflow.set_experiment(model_name)
    with mlflow.start_run(run_name=f"score v{version} at {as_of}") as run:
        mlflow.set_tags(
            {
                "step": "score",
                "engine": "spark",
                "scored_version": version,
                "as_of": str(as_of),
                "output": target,
                "git_commit": tracking.git_commit() or "unknown",
            }
        )
        mlflow.log_metrics(
            {
                "profiles": profiles,
                "eligible": eligible,
                "scored": scored,
                **{f"bucket_{b}": n for b, n in sizes.items()},
            }
        )
        if scored:
            mlflow.log_dict(
                {"bins": list(range(0, 101, 5)), "counts": histogram}, "scoring/score_histogram.json"
            )
            with tempfile.TemporaryDirectory() as tmp:
                title = "Scores of this run" + (
                    "" if len(sample) == scored else f" (sample of {len(sample):,})"
                )
                path = save_histogram(
                    sample, Path(tmp) / "score_histogram.png", title=title, xlabel="score (0-100)"
                )
                mlflow.log_artifact(str(path), "scoring")
        return run.info.run_id
