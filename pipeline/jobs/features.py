"""The feature job: a point-in-time feature table at an as-of date, labelled when possible."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from propensity.core.config import ProjectConfig
from propensity.features.build.selection import (
    categories_source,
    feature_count_note,
    model_features,
    table_features,
)
from propensity.features.build.snapshots import windows_before_data
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import engine_for, feature_set, load_events, model_feature_set


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
    feature_note: str = ""  # what ``features`` is made of (as ``train`` and ``score`` say it)
    warnings: list[str] = field(default_factory=list)  # e.g. windows longer than the data


def build_features(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    model: str | None = None,
) -> FeatureTable:
    """Write the feature table at ``as_of`` (Parquet, atomically), labelled when possible.

    With a model, only its population is written, plus ``label`` when the horizon after
    ``as_of`` has fully passed in the data. Feature labels travel in the Parquet metadata (on
    Spark, a directory of parts with the facts in ``OUT/_propensity.json``).
    """

    engine = engine_for(config)
    loaded = load_events(events, config, engine=engine)
    span = loaded.span()
    cutoff = span[1] if span else loaded.data_end()
    as_of = as_of or cutoff
    fs = feature_set(loaded, config, as_of)
    selected = len(table_features(fs))
    # Profiles as the identity graph knew them at as_of: no later link moves an event.
    if model:
        model_cfg = load_model_config(model, config)
        rate = model_cfg.features.population_outcome_rate
        fs = model_feature_set(fs, loaded, model_cfg.outcome, [as_of], rate)
        relation, labelled = loaded.population_snapshot(fs, model_cfg, as_of, cutoff)
        selected = len(model_features(fs, model_cfg.features, model_cfg.governance, model_cfg.name))
    else:
        relation, labelled = loaded.snapshot(fs, as_of), False
    window = windows_before_data(config.features.windows_days, span[0], as_of) if span else None
    metadata = {
        "as_of": str(as_of),
        "model": model,
        "categories": fs.categories,
        "event_types": fs.event_types,
        "labels": fs.labels(),
        "features": fs.names(),
    }
    rows, positives = engine.write_feature_table(loaded, relation, out, metadata, labelled)
    return FeatureTable(
        out=Path(out),
        as_of=as_of,
        rows=rows,
        features=len(table_features(fs)),
        labelled=labelled,
        positives=positives,
        model=model,
        data_end=cutoff,
        feature_note=feature_count_note(fs, selected, categories_source(config.features.categories, as_of)),
        warnings=[window] if window else [],
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
