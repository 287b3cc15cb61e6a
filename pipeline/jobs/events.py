"""Opening events once for every job: the engine, staged and stitched events, the feature set.

:func:`engine_for` is the one place that reads ``engine.name``; every job asks it for the
engine and goes through :mod:`propensity.features.engine`'s interface. :func:`load_events`
opens raw events (validated and stitched in memory, as ``ingest`` would) or an ingest
directory written by either engine.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.registry import build_registry
from propensity.features.duckdb import DuckDBEngine, LoadedEvents
from propensity.features.engine import Engine, Events, Stitched
from propensity.features.ingest.staging import bad_rows_message

OnBadRows = Literal["fail", "quarantine"]
# Bumped whenever the ingest output changes shape (2: events carry new_identities;
# 3: events and profiles carry profile_key; 4: the identity graph keeps when each identity
# and link was first seen, and events their anchor identity, for profiles as of a date).
INGEST_FORMAT = 4
# The identity graph's tables, written by ingest and read back as views of the same name.
GRAPH_TABLES = ("identity_map", "identity_links", "identity_unsettled")
INGEST_TABLES = ("events", "profiles", *GRAPH_TABLES)

__all__ = ["LoadedEvents", "engine_for", "feature_set", "load_events", "stage_and_stitch"]


def engine_for(config: ProjectConfig) -> Engine:
    """The engine ``config.engine.name`` names: DuckDB (embedded, the default) or Spark, whose
    wing is imported only when chosen (so nothing else needs pyspark installed)."""
    if config.engine.name == "spark":
        from propensity.features.spark.engine import SparkEngine

        return SparkEngine(config)
    return DuckDBEngine(config)


def stage_and_stitch(
    engine: Engine,
    inputs: Any,
    config: ProjectConfig,
    on_bad_rows: OnBadRows,
    as_of: dt.date | None,
    profiles: str | Path | None,
) -> Stitched:
    """Validate, normalise, de-duplicate and stitch raw events; with ``on_bad_rows="fail"``, a bad
    row stops here, before any stitching, with one line naming the file and the reasons."""
    staged = engine.stage_events(inputs, as_of)
    if staged.counts.rows_bad and on_bad_rows == "fail":
        staged.close()
        raise UserError(bad_rows_message(inputs.display, staged.counts))
    return engine.stitch(staged, profiles)


def read_manifest(engine: Engine, directory: Any) -> dict[str, Any]:
    """An ingest directory's manifest, refused when an older format wrote it."""
    manifest = json.loads(engine.read_text(f"{directory}/manifest.json"))
    if manifest.get("format") != INGEST_FORMAT:
        raise UserError(
            f"{directory}: written by an older propensity (ingest format "
            f"{manifest.get('format', 1)}, need {INGEST_FORMAT}); run `propensity ingest` again"
        )
    return manifest


def load_events(
    events: str | Path,
    config: ProjectConfig,
    on_bad_rows: OnBadRows | None = None,
    engine: Engine | None = None,
) -> Events:
    """Raw events or an ingest directory (either engine's) -> ``events``, ``profiles`` and the
    identity graph (``identity_map``, ``identity_links``, ``identity_unsettled``, and
    ``profile_attributes`` when there are some) on the config's engine, with the graph to see
    them as of a date. On DuckDB the result is a :class:`LoadedEvents` (``.con``).

    Raw events are validated and stitched in memory exactly as ``ingest`` would.
    """
    engine = engine or engine_for(config)
    inputs = engine.resolve_input(events)
    if inputs.ingested is not None:
        return engine.open_ingested(inputs, read_manifest(engine, inputs.ingested), INGEST_TABLES)
    on_bad_rows = on_bad_rows or config.ingest.on_bad_rows
    return engine.open_stitched(stage_and_stitch(engine, inputs, config, on_bad_rows, None, inputs.profiles))


def feature_set(
    events: Events, config: ProjectConfig, before: dt.date, categories: list[str] | None = None
) -> FeatureSet:
    """The registry for this project.

    Categories: the ones given (a trained model's), else the config's, else learned from the
    events before ``before``.
    """
    categories = categories if categories is not None else config.features.categories
    if categories is None:
        categories = events.learn_categories(before, config.features.max_learned_categories)
    return build_registry(config.features, categories)
