"""The segments job: events + score partitions + segments.yaml -> memberships at an as-of.

Written once for both engines: every rule is checked against the columns of the feature
snapshot (their kinds asked of the engine), then the engine qualifies all segments against the
previous as-of and writes ``out_dir/as_of=<date>/`` atomically
(:mod:`propensity.features.activation.segments`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from propensity.core.config import ProjectConfig
from propensity.features.activation import segments as segments_mod
from propensity.pipeline.jobs.config_files import load_segments
from propensity.pipeline.jobs.events import engine_for, feature_set, load_events


@dataclass
class SegmentsResult:
    """One as-of's qualification: sizes and transitions per segment."""

    as_of: dt.date
    out: Path
    previous_as_of: dt.date | None
    segments: list[segments_mod.SegmentCounts]
    rows: int
    profiles: int
    # Later dates whose stored statuses a back-fill made stale: re-run them in date order.
    stale_later: list[dt.date] = field(default_factory=list)


def known_models(config: ProjectConfig, scores_dir: str | Path) -> list[str]:
    """Models a rule may name: configured ones (configs/models) and ones with score partitions."""
    configured = {p.stem for p in Path(config.models_dir).glob("*.yaml")}
    scores = Path(scores_dir)
    scored = (
        {d.name.split("=", 1)[1] for d in scores.glob("model=*") if d.is_dir()} if scores.is_dir() else set()
    )
    return sorted(configured | scored)


def qualify_segments(
    events: str | Path,
    scores_dir: str | Path,
    as_of: dt.date | None,
    segments_path: str | Path,
    out_dir: str | Path,
    config: ProjectConfig,
) -> SegmentsResult:
    """Qualify the segments of ``segments_path`` at ``as_of`` (default: the day after the data).

    Every rule is checked (columns, kinds, models, score partitions) before anything runs;
    then one query computes all memberships with their statuses against the previous as-of
    in ``out_dir`` and writes ``out_dir/as_of=<date>/`` atomically (on Spark, ``out_dir`` and
    the score partitions are on this machine's file system).
    """
    definitions = load_segments(segments_path)
    engine = engine_for(config)
    loaded = load_events(events, config, engine=engine)
    as_of = as_of or loaded.data_end()
    # Profiles as they were at as_of (the identity graph before it), as the scores were built.
    fs = feature_set(loaded, config, before=as_of)
    kinds = loaded.column_kinds(loaded.snapshot(fs, as_of))
    segments = segments_mod.compile_segments(
        definitions.segments, kinds, known_models(config, scores_dir), str(segments_path)
    )
    scores = segments_mod.score_files(scores_dir, segments, as_of)
    # Only the features the rules read are computed; the snapshot's profiles do not depend on
    # which (every profile with events in the lookback). `is_known` keeps the list non-empty:
    # an empty include would select every feature.
    used = {c for s in segments for c in s.rule.columns if "." not in c} & set(fs.names(False))
    chosen = fs.select(include=sorted(used | {"is_known"}))
    features = loaded.snapshot(chosen, as_of)
    outcome = engine.qualify(loaded, segments, features, scores, out_dir, as_of, config.identity.namespaces)
    return SegmentsResult(
        as_of=outcome.as_of,
        out=outcome.directory,
        previous_as_of=outcome.previous_as_of,
        segments=outcome.counts,
        rows=outcome.rows,
        profiles=outcome.profiles,
        stale_later=outcome.stale_later,
    )
