"""The feature job: a point-in-time feature table at an as-of date, labelled when possible."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from propensity.core.config import ProjectConfig
from propensity.core.io import atomic_path
from propensity.features.build.event_queries import data_end, learn_categories
from propensity.features.build.labels import population_snapshot_sql
from propensity.features.build.registry import build_registry
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.sql import sql_string
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.ingest import load_events


def feature_set(
    con: duckdb.DuckDBPyConnection,
    config: ProjectConfig,
    before: dt.date,
    categories: list[str] | None = None,
):
    """The registry for this project.

    Categories: the ones given (a trained model's), else the config's, else learned from the
    events before ``before``.
    """

    categories = categories if categories is not None else config.features.categories
    if categories is None:
        categories = learn_categories(con, before, config.features.max_learned_categories)
    return build_registry(config.features, categories)


@dataclass(frozen=True)
class FeatureTable:
    """A written feature table: where, when, how big, and whether it carries labels."""

    out: Path
    as_of: dt.date
    rows: int
    features: int
    labelled: bool
    positives: int | None  # None when unlabelled
    model: str | None
    data_end: dt.date  # the day after the last event


def build_features(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    model: str | None = None,
) -> FeatureTable:
    """Write the feature table at ``as_of`` (Parquet, atomically), labelled when possible.

    With a model, only its population is written, plus ``label`` when the horizon after
    ``as_of`` has fully passed in the data. Feature labels travel in the Parquet metadata.
    """

    loaded = load_events(events, config)
    con = loaded.con
    cutoff = data_end(con)
    as_of = as_of or cutoff
    fs = feature_set(con, config, as_of)
    # Profiles as the identity graph knew them at as_of: no later link moves an event.
    if model:
        model_config = load_model_config(model, config)
        sql, labelled = population_snapshot_sql(fs, model_config, as_of, con, cutoff, graph=loaded.graph)
    else:
        sources = loaded.sources(as_of)
        sql = snapshot_sql(fs, as_of, con, events=sources.events, profiles=sources.profiles)
        labelled = False
    metadata = json.dumps(
        {
            "as_of": str(as_of),
            "model": model,
            "categories": fs.categories,
            "labels": fs.labels(),
            "features": fs.names(),
        }
    )
    out = Path(out)
    with atomic_path(out, kind="features") as tmp:
        con.execute(
            f"COPY ({sql}) TO {sql_string(str(tmp))} "
            f"(FORMAT parquet, COMPRESSION zstd, KV_METADATA {{propensity: {sql_string(metadata)}}})"
        )
        rows = con.execute(
            f"SELECT count(*), {'sum(label)' if labelled else 'NULL'} "
            f"FROM read_parquet({sql_string(str(tmp))})"
        ).fetchone()
    return FeatureTable(
        out=out,
        as_of=as_of,
        rows=rows[0],
        features=len(fs.names()),
        labelled=labelled,
        positives=int(rows[1]) if labelled else None,
        model=model,
        data_end=cutoff,
    )


def read_feature_metadata(path: str | Path) -> dict:
    """The registry facts (labels, categories, as_of) stored in a feature table."""
    import pyarrow.parquet as pq

    if Path(path).is_dir():  # written on Spark: the facts sit beside the parts
        sidecar = Path(path) / "_propensity.json"
        return json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"propensity")
    return json.loads(raw) if raw else {}
