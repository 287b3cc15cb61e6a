"""The segments job on Apache Spark (``segment_jobs.qualify_segments`` with ``engine.name: spark``).

The heavy part runs on Spark: the feature snapshot at ``as_of`` (profiles as the identity
graph knew them then) and every segment's rule, compiled to Spark SQL from the same parsed
rules (:func:`propensity.features.activation.segments.qualification_sql` with ``dialect="spark"``),
against the previous date's memberships and the model scores. The resulting rows (one per
membership: far fewer than the events) and the members' identities come to the driver as
Arrow and are written by the very code the DuckDB job uses
(:func:`propensity.features.activation.segments.write_qualification`): the same files, statuses,
consent hold-back, summary and fingerprints.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from propensity.core.config import ProjectConfig
from propensity.features.activation import segments as segments_mod
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.spark import features as sf
from propensity.features.spark.session import spark_session
from propensity.features.sql import column_kind
from propensity.pipeline.jobs.config_files import load_segments
from propensity.pipeline.jobs.segments import SegmentsResult, known_models
from propensity.pipeline.jobs.spark import feature_set, load_events


def qualify_segments(
    events: str | Path,
    scores_dir: str | Path,
    as_of: dt.date | None,
    segments_path: str | Path,
    out_dir: str | Path,
    config: ProjectConfig,
) -> SegmentsResult:
    """Qualify the segments of ``segments_path`` at ``as_of`` on Spark; writes
    ``out_dir/as_of=<date>/`` exactly as the DuckDB job does (``out_dir`` and the score
    partitions on this machine's file system)."""
    definitions = load_segments(segments_path)
    spark = spark_session(config.engine)
    loaded = load_events(spark, events, config)
    as_of = as_of or sf.data_end(spark)
    sources = loaded.sources(as_of)
    fs = feature_set(spark, config, before=as_of)
    full = sf.snapshot(spark, fs, as_of, events=sources.events, profiles=sources.profiles)
    kinds = {f.name: column_kind(f.dataType.simpleString()) for f in full.schema.fields}
    kinds = {name: kind for name, kind in kinds.items() if kind is not None and name != "profile_id"}
    segments = segments_mod.compile_segments(
        definitions.segments, kinds, known_models(config, scores_dir), str(segments_path)
    )
    scores = segments_mod.score_files(scores_dir, segments, as_of)
    # Only the features the rules read are computed (see segment_jobs.qualify_segments).
    used = {c for s in segments for c in s.rule.columns if "." not in c} & set(fs.names(False))
    chosen = fs.select(include=sorted(used | {"is_known"}))
    features = sf.snapshot(spark, chosen, as_of, events=sources.events, profiles=sources.profiles)
    # Computed once: every segment's rule reads it.
    features.localCheckpoint().createOrReplaceTempView("segment_features")
    relations = {}
    for i, model in enumerate(sorted(scores)):
        spark.read.parquet(*scores[model]).createOrReplaceTempView(f"segment_scores_{i}")
        relations[model] = f"segment_scores_{i}"
    previous = segments_mod.previous_as_of(out_dir, as_of)
    previous_file = segments_mod.partition_dir(out_dir, previous) / segments_mod.MEMBERSHIPS_FILE
    if previous is not None:
        spark.read.parquet(str(previous_file)).createOrReplaceTempView("segment_previous")
        relations["previous"] = "segment_previous"
    rows = spark.sql(
        segments_mod.qualification_sql(
            segments,
            "SELECT * FROM segment_features",
            scores,
            previous_file if previous is not None else None,
            as_of,
            dialect="spark",
            relations=relations,
        )
    ).localCheckpoint()
    rows.createOrReplaceTempView("segment_rows")
    namespaces = list(config.identity.namespaces)
    members = "(SELECT DISTINCT profile_id FROM segment_rows WHERE status <> 'held_back')"
    listed = ", ".join(f"'{ns}'" for ns in namespaces)
    member_identities = spark.sql(f"""
        SELECT i.profile_id, i.namespace, i.value FROM {sources.identity_map} i
        WHERE i.profile_id IN {members} AND i.namespace IN ({listed})
    """)
    consent = ", ".join(CONSENT_COLUMNS)
    member_profiles = spark.sql(f"""
        SELECT profile_id, {consent} FROM {sources.profiles} WHERE profile_id IN {members}
    """)
    con = duckdb.connect()
    try:
        for name, frame in (
            ("_segment_rows", rows),
            ("member_identities", member_identities),
            ("member_profiles", member_profiles),
        ):
            con.register(f"_{name}_arrow", frame.toArrow())
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _{name}_arrow")
            con.unregister(f"_{name}_arrow")
        outcome = segments_mod.write_qualification(
            con,
            segments,
            out_dir,
            as_of,
            identity_namespaces=namespaces,
            identity_map="member_identities",
            profiles="member_profiles",
        )
    finally:
        con.close()
    return SegmentsResult(
        as_of=outcome.as_of,
        out=outcome.directory,
        previous_as_of=outcome.previous_as_of,
        segments=outcome.counts,
        rows=outcome.rows,
        profiles=outcome.profiles,
        stale_later=outcome.stale_later,
    )
