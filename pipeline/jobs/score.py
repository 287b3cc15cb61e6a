"""The score and explain jobs: a registered model applied to the profiles at an as-of date.

``score_model`` streams the model's population through the model in chunks (peak memory is
bounded by the chunk, not the population), writes ``OUT/model=<name>/as_of=<date>/`` whole
or not at all, and logs a scoring run to MLflow. ``explain_profile`` answers "why this
score?" for one profile, including why a profile is not scored at all.
"""

from __future__ import annotations

import datetime as dt
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, output_lock, scratch_dir
from propensity.features.build.event_queries import data_end
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.registry import PROFILE_ATTRIBUTE_FEATURES
from propensity.features.build.rules import Rule, conjuncts, parse_rule
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import arrow_batches
from propensity.features.sql import sql_ident, sql_string
from propensity.models import tracking
from propensity.models.estimator import PropensityModel
from propensity.models.scoring import score_batch
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.features import feature_set
from propensity.pipeline.jobs.ingest import LoadedEvents, load_events

# Identity namespaces carried on the score table: one representative value each (the
# smallest); every identity of a profile is in the ingest's identity_map.
SCORE_IDENTITY_COLUMNS = ("crm_id", "email_sha256", "phone_sha256", "ecid")

Progress = Callable[[int, int | None], None]  # (profiles scored, all to score once known)
ELIGIBLE = "__in_population"
T = TypeVar("T")


@dataclass(frozen=True)
class ScoreRun:
    """A written score partition and what went into it."""

    model: str
    version: str
    as_of: dt.date
    out: Path  # the partition directory
    profiles: int  # profiles with a feature row at as_of
    eligible: int  # of those, in the model's population
    scored: int
    bucket_sizes: dict[str, int]
    run_id: str
    seconds: float


@dataclass(frozen=True)
class Explanation:
    """One profile's score and factors, or why it is not scored."""

    model: str
    version: str
    profile_id: str
    as_of: dt.date
    eligible: bool
    failed_conditions: list[str] = field(default_factory=list)  # population parts it fails
    values: dict[str, Any] = field(default_factory=dict)  # the columns those parts read
    probability: float | None = None
    score: int | None = None
    bucket: str | None = None
    factors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Prepared:
    model: PropensityModel
    version: str
    loaded: LoadedEvents
    fs: FeatureSet
    population: Rule
    as_of: dt.date


def _prepare(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None,
    alias: str | None,
    version: str | None,
) -> _Prepared:
    """Load the model and the events; refuse an as-of or a model the data cannot serve."""
    if version and alias:
        raise UserError("give --version or --alias, not both")
    client = tracking.configure(config)
    model, mv = tracking.load_propensity_model(client, model_name, version=version, alias=alias)
    loaded = load_events(events, config)
    as_of = checked_as_of(as_of, data_end(loaded.con))
    fs = feature_set(loaded.con, config, before=as_of, categories=model.metadata.get("categories"))
    population = model_population(model, model_name, str(mv.version), fs, config)
    return _Prepared(model, str(mv.version), loaded, fs, population, as_of)


def checked_as_of(as_of: dt.date | None, cutoff: dt.date) -> dt.date:
    """``as_of`` (default: ``cutoff``, the day after the last event); after the data: UserError."""
    as_of = as_of or cutoff
    if as_of > cutoff:
        raise UserError(
            f"--as-of {as_of} is after the data: the last event is on {cutoff - dt.timedelta(days=1)}, "
            f"so the latest as-of is {cutoff}"
        )
    return as_of


def model_population(
    model: PropensityModel, model_name: str, version: str, fs: FeatureSet, config: ProjectConfig
) -> Rule:
    """The model's population rule, once every feature the model uses is one ``fs`` can build
    (else a UserError naming one); shared by the DuckDB and Spark score jobs."""
    buildable = set(fs.names()) | set(PROFILE_ATTRIBUTE_FEATURES)
    missing = [name for name in model.feature_names if name not in buildable]
    if missing:
        raise UserError(
            f"model '{model_name}' v{version} uses {len(missing)} features these events and the "
            f"project config cannot build, e.g. `{missing[0]}` (check features.windows_days and "
            f"categories against the config it was trained with)"
        )
    population_text = model.metadata.get("population") or load_model_config(model_name, config).population
    names = fs.names(model_features_only=False)
    return parse_rule(population_text, names, f"model '{model_name}': population")


def _identities_sql(loaded: LoadedEvents, identity_map: str) -> tuple[str, list[str]]:
    present = {r[0] for r in loaded.con.execute(f"SELECT DISTINCT namespace FROM {identity_map}").fetchall()}
    columns = [c for c in SCORE_IDENTITY_COLUMNS if c in present]
    selects = ", ".join(
        f"min(value) FILTER (WHERE namespace = {sql_string(c)}) AS {sql_ident(c)}" for c in columns
    )
    sql = f"SELECT profile_id{', ' + selects if selects else ''} FROM {identity_map} GROUP BY profile_id"
    return sql, columns


def _prefetched(items: Iterator[T], depth: int = 2, on_stop: Callable[[], None] | None = None) -> Iterator[T]:
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


def unused_feature_types(model: PropensityModel) -> dict[str, str]:
    """The model's features no tree splits on, each with the type of the NULL that stands in for
    it ("string" for a categorical, else "double": DuckDB and Spark SQL both read them). Both
    score jobs build only the other features: these cannot change a score or a factor, and a
    trained model often reads a fifth of the registry, so its feature build is several times
    faster."""
    used = set(model.used_features())
    return {
        name: "string" if name in model.categories else "double"
        for name in model.feature_names
        if name not in used
    }


def _model_columns(model: PropensityModel, unused: dict[str, str]) -> str:
    """The model's feature columns for the scoring query, ``unused`` ones as typed NULLs."""
    return "".join(
        f", CAST(NULL AS {unused[name]}) AS {sql_ident(name)}" if name in unused else f", f.{sql_ident(name)}"
        for name in model.feature_names
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
    """Score the model's population at ``as_of`` (default: the day after the last event).

    Writes ``OUT/model=<name>/as_of=<date>/part-0.parquet`` (``OUT`` defaults to the project's
    ``WORK_DIR/scores``) atomically; a re-run replaces the partition with identical rows but
    for ``scored_at``. Logs a scoring run to the model's MLflow experiment.
    """
    started = time.perf_counter()
    prep = _prepare(model_name, events, config, as_of, alias, version)
    con = prep.loaded.con
    factors = config.scoring.factors if factors is None else factors
    chunk_rows = chunk_rows or config.scoring.chunk_rows
    if factors < 0:
        raise UserError(f"--factors must be 0 or more, got {factors}")
    out_root = Path(out) if out is not None else Path(config.work_dir) / "scores"
    target = out_root / f"model={model_name}" / f"as_of={prep.as_of}"

    sources = prep.loaded.sources(prep.as_of)
    identities, identity_columns = _identities_sql(prep.loaded, sources.identity_map)
    unused = unused_feature_types(prep.model)
    partitions = config.scoring.profile_partitions or _partitions_for(
        con, sources.profiles, len(prep.model.feature_names) - len(unused)
    )
    model_columns = _model_columns(prep.model, unused)

    def rows_sql(part: int) -> str:
        """The feature rows of one profile partition, streamed in one pass: each row once with its
        population flag and only the columns the model reads (DuckDB then skips the features no
        one reads), in no particular order (the partition is sorted when it is written)."""
        events = sources.events
        if partitions > 1:  # by the profile the events belong to at as_of: a profile is never split
            events = f"(SELECT * FROM {events} WHERE hash(profile_id) % {partitions} = {part})"
        features_sql = snapshot_sql(
            prep.fs, prep.as_of, con, events=events, profiles=sources.profiles, ordered=False
        )
        return f"""
            SELECT f.profile_id{model_columns}, f.{ELIGIBLE}
                   {"".join(f", i.{sql_ident(c)}" for c in identity_columns)}
            FROM (
                SELECT *, coalesce(({prep.population.sql("duckdb")}), false) AS {ELIGIBLE}
                FROM ({features_sql})
            ) f LEFT JOIN ({identities}) i USING (profile_id)
        """

    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    profiles = eligible = scored = 0
    # The lock is held from the first temp file to the partition's replace; temps stay outside scores/.
    with output_lock(target, root=out_root, kind="scores"), scratch_dir(target, root=out_root) as tmp:
        parts = Path(tmp) / "unranked.parquet"
        writer: pq.ParquetWriter | None = None
        batches = _prefetched(
            (batch for part in range(partitions) for batch in arrow_batches(con, rows_sql(part), chunk_rows)),
            on_stop=con.interrupt,
        )
        for batch in batches:
            profiles += batch.num_rows
            rows = pa.Table.from_batches([batch]).filter(batch.column(ELIGIBLE))
            eligible += rows.num_rows
            if rows.num_rows:
                table = score_batch(
                    prep.model,
                    rows,
                    model_name=model_name,
                    model_version=prep.version,
                    as_of=prep.as_of,
                    factors=factors,
                    scored_at=scored_at,
                    identity_columns=identity_columns,
                )
                if writer is None:
                    writer = pq.ParquetWriter(parts, table.schema, compression="zstd")
                writer.write_table(table)
                scored += table.num_rows
            if progress is not None:
                progress(scored, None)
        if writer is not None:
            writer.close()
        bucket_sizes = _write_partition(con, parts if writer is not None else None, target)
    if progress is not None:
        progress(scored, scored)
    run_id = _log_scoring_run(prep, model_name, target, profiles, eligible, scored, bucket_sizes)
    return ScoreRun(
        model=model_name,
        version=prep.version,
        as_of=prep.as_of,
        out=target,
        profiles=profiles,
        eligible=eligible,
        scored=scored,
        bucket_sizes=bucket_sizes,
        run_id=run_id,
        seconds=time.perf_counter() - started,
    )


# What one partition of the feature build holds: 125,000 profiles of the default registry's 232
# features. A profile also costs about 64 features' worth whatever the model reads (its id, its
# daily rollup): measured at 1M profiles, 3 partitions of a 41-feature model peak at 3.7 GiB,
# 2 at 4.2 GiB; 8 of a 195-feature model at 3.8 GiB.
PROFILE_OVERHEAD_FEATURES = 64
CELLS_PER_PARTITION = 125_000 * (232 + PROFILE_OVERHEAD_FEATURES)


def _partitions_for(con, profiles: str, features: int) -> int:
    """Profile partitions of the feature build when the config leaves it open: one per
    CELLS_PER_PARTITION profile x (features + overhead) values. DuckDB's wide aggregates run
    faster, and in far less memory, over a few hundred thousand profiles at a time than over
    millions; a model that reads fewer features takes more profiles at a time, since each
    partition query rescans the events."""
    count = con.execute(f"SELECT count(*) FROM {profiles}").fetchall()[0][0]
    cells = int(count) * (features + PROFILE_OVERHEAD_FEATURES)
    return max(1, -(-cells // CELLS_PER_PARTITION))


def _write_partition(con, unranked: Path | None, target: Path) -> dict[str, int]:
    """Add ``percentile`` (1-100 within this run, ties share one) and write the partition."""
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        if unranked is None:  # nobody eligible: an empty partition still says "scored, none"
            return {}
        source = f"read_parquet({sql_string(str(unranked))})"
        con.execute(f"""
            COPY (
                SELECT * EXCLUDE (scored_at),
                       greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))::SMALLINT
                           AS percentile,
                       scored_at
                FROM {source} ORDER BY profile_id
            ) TO {sql_string(str(tmp / "part-0.parquet"))} (FORMAT parquet, COMPRESSION zstd)
        """)
        sizes = dict(con.execute(f"SELECT bucket, count(*) FROM {source} GROUP BY 1 ORDER BY 1").fetchall())
    return {b: int(sizes.get(b, 0)) for b in ("high", "medium", "low")}


def _log_scoring_run(
    prep: _Prepared, model_name: str, target: Path, profiles: int, eligible: int, scored: int, sizes: dict
) -> str:
    mlflow.set_experiment(model_name)
    with mlflow.start_run(run_name=f"score v{prep.version} at {prep.as_of}") as run:
        mlflow.set_tags(
            {
                "step": "score",
                "scored_version": prep.version,
                "as_of": str(prep.as_of),
                "output": str(target),
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
            scores = pq.read_table(target / "part-0.parquet", columns=["score"])["score"].to_numpy()
            mlflow.log_dict(
                {
                    "bins": list(range(0, 101, 5)),
                    "counts": np.histogram(scores, bins=range(0, 101, 5))[0].tolist(),
                },
                "scoring/score_histogram.json",
            )
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(_histogram_png(scores, Path(tmp) / "score_histogram.png")), "scoring")
        return run.info.run_id


def _histogram_png(scores: np.ndarray, path: Path) -> Path:
    from propensity.models.plots import save_histogram

    return save_histogram(scores, path, title="Scores of this run", xlabel="score (0-100)")


def explain_profile(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    profile_id: str,
    as_of: dt.date | None = None,
    alias: str | None = None,
    version: str | None = None,
    factors: int | None = None,
) -> Explanation:
    """The score, bucket and factors of one profile, or which population conditions it fails."""
    prep = _prepare(model_name, events, config, as_of, alias, version)
    con = prep.loaded.con
    where = f"profile_id = {sql_string(profile_id)}"
    sources = prep.loaded.sources(prep.as_of)
    # Only this profile's events (as attributed at as_of): one profile's features, not everyone's.
    features_sql = snapshot_sql(
        prep.fs,
        prep.as_of,
        con,
        events=f"(SELECT * FROM {sources.events} WHERE {where})",
        profiles=sources.profiles,
        ordered=False,
    )
    row = con.execute(features_sql).df()
    if row.empty:
        known = con.execute(f"SELECT count(*) FROM profiles WHERE {where}").fetchall()[0][0]
        raise UserError(
            f"profile '{profile_id}' "
            + (
                f"has no events in the {prep.fs.lookback_days} days before {prep.as_of}"
                if known
                else "is not in these events (profile ids come from `propensity ingest`)"
            )
        )
    con.register("_explained", row)
    failed = [
        part.text
        for part in conjuncts(prep.population)
        if not con.execute(f"SELECT count(*) FROM _explained WHERE {part.sql('duckdb')}").fetchall()[0][0]
    ]
    values = {c: _plain(row[c].iloc[0]) for c in sorted(prep.population.columns) if c in row.columns}
    con.unregister("_explained")
    if failed:
        return Explanation(
            model_name, prep.version, profile_id, prep.as_of, False, failed_conditions=failed, values=values
        )
    k = config.scoring.factors if factors is None else factors
    table = score_batch(
        prep.model,
        row,
        model_name=model_name,
        model_version=prep.version,
        as_of=prep.as_of,
        factors=k,
        scored_at=dt.datetime.now(dt.UTC),
    ).to_pylist()[0]
    return Explanation(
        model_name,
        prep.version,
        profile_id,
        prep.as_of,
        True,
        values=values,
        probability=table["probability"],
        score=table["score"],
        bucket=table["bucket"],
        factors=table["factors"],
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return None if pd.isna(value) else value
