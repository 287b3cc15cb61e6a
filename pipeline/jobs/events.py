"""Opening events once for every job: the engine, the loaded events, the feature set.

:func:`engine_for` is the one place that reads ``engine.name``; every job asks it for the
engine and goes through :mod:`propensity.features.engine`'s interface. :func:`load_events`
opens raw events (validated and stitched in memory, as ``ingest`` would) or an ingest
directory written by either engine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from propensity.core.config import ModelConfig, OutcomeConfig, ProjectConfig
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.outcome_rate import NAME as OUTCOME_RATE
from propensity.features.build.outcome_rate import with_outcome_rate
from propensity.features.build.registry import build_registry
from propensity.features.duckdb import DuckDBEngine, LoadedEvents
from propensity.features.engine import Engine, Events
from propensity.features.ingest.manifest import OnBadRows
from propensity.models.estimator import PropensityModel

__all__ = [
    "LoadedEvents",
    "engine_for",
    "feature_set",
    "load_events",
    "model_feature_set",
    "model_vocabulary",
    "scoring_feature_set",
    "training_feature_set",
]


def engine_for(config: ProjectConfig) -> Engine:
    """The engine ``config.engine.name`` names: DuckDB (embedded, the default) or Spark, whose
    wing is imported only when chosen (so nothing else needs pyspark installed)."""
    if config.engine.name == "spark":
        from propensity.features.spark.engine import SparkEngine

        return SparkEngine(config)
    return DuckDBEngine(config)


def load_events(
    events: str | Path,
    config: ProjectConfig,
    on_bad_rows: OnBadRows | None = None,
    engine: Engine | None = None,
) -> Events:
    """Raw events or an ingest directory (either engine's) -> ``events``, ``profiles`` and the
    identity graph (``identity_map``, ``identity_links``, ``identity_unsettled``, and
    ``profile_attributes`` when there are some) on the config's engine (or ``engine``), with
    the graph to see them as of a date. On DuckDB the result is a :class:`LoadedEvents`
    (``.con``).

    Raw events are validated and stitched in memory exactly as ``ingest`` would.
    """
    return (engine or engine_for(config)).load_events(events, on_bad_rows)


def feature_set(
    events: Events,
    config: ProjectConfig,
    before: dt.date,
    categories: list[str] | None = None,
    event_types: list[str] | None = None,
) -> FeatureSet:
    """The registry for this project.

    Categories: the ones given (a trained model's), else the config's, else learned from the
    events before ``before``. Learned event types: the ones given (a trained model's), else
    learned from the events before ``before``.
    """
    features = config.features
    categories = categories if categories is not None else features.categories
    learned = events.vocabulary(
        before,
        features.max_learned_categories if categories is None else 0,
        features.max_learned_event_types if event_types is None else 0,
    )
    categories = learned[0] if categories is None else categories
    event_types = learned[1] if event_types is None else event_types
    return build_registry(features, categories, event_types=event_types)


def model_vocabulary(metadata: dict) -> dict[str, list[str] | None]:
    """The categories and learned event types a trained model fixed, as :func:`feature_set`'s
    keyword arguments (a model trained before event types were learned had none)."""
    categories = metadata.get("categories")
    event_types = metadata.get("event_types")
    if event_types is None and categories is not None:
        event_types = []
    return {"categories": categories, "event_types": event_types}


def model_feature_set(
    fs: FeatureSet, events: Events, outcome: OutcomeConfig, dates: list[dt.date], outcome_rate: bool
) -> FeatureSet:
    """``fs`` with the features that depend on the model, for its snapshot ``dates``: the
    population's recent outcome rate when ``outcome_rate`` (``features.population_outcome_rate``
    when training; whether the model uses it when scoring). Train, score, explain and evaluate
    all add them here, so the rate at a date is the same query wherever it is needed."""
    return with_outcome_rate(fs, outcome, dates, events.rows) if outcome_rate else fs


def training_feature_set(
    events: Events, config: ProjectConfig, model_cfg: ModelConfig, dates: list[dt.date]
) -> FeatureSet:
    """The features a model trains on at its snapshot ``dates`` (the plan's: the ones the frames
    build): the registry learned before the first date, with the model's own features
    (:func:`model_feature_set`, ``features.population_outcome_rate``)."""
    fs = feature_set(events, config, before=dates[0])
    rate = model_cfg.features.population_outcome_rate
    return model_feature_set(fs, events, model_cfg.outcome, dates, rate)


def scoring_feature_set(fs: FeatureSet, events: Events, model: PropensityModel, as_of: dt.date) -> FeatureSet:
    """``fs`` with the model-dependent features a trained ``model`` uses, at ``as_of`` (the
    outcome it was trained for is in its metadata): what score, explain and evaluate build."""
    uses_rate = OUTCOME_RATE in model.feature_names
    outcome = OutcomeConfig.model_validate(model.metadata["outcome"]) if uses_rate else None
    return model_feature_set(fs, events, outcome, [as_of], uses_rate) if outcome else fs
