"""Segments qualified on Spark, written by the very code the DuckDB engine uses.

Every segment's rule is compiled to Spark SQL from the same parsed rules
(:func:`propensity.features.activation.segments.qualification_sql` with ``dialect="spark"``)
and run against the feature snapshot, the previous date's memberships and the model scores.
The resulting rows (one per membership: far fewer than the events) and the members'
identities come to the driver as Arrow and are written by
:func:`propensity.features.activation.segments.write_qualification`: the same files, statuses,
consent hold-back, summary and fingerprints.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from propensity.features.activation import segments as segments_mod
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.as_of import AsOfSources

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _register_inputs(spark: SparkSession, features: DataFrame, scores, out_dir, as_of: dt.date):
    """The temp views the compiled rules read; (relations by name, the previous memberships file)."""
    # Computed once: every segment's rule reads it.
    features.localCheckpoint().createOrReplaceTempView("segment_features")
    relations = {}
    for i, model in enumerate(sorted(scores)):
        spark.read.parquet(*scores[model]).createOrReplaceTempView(f"segment_scores_{i}")
        relations[model] = f"segment_scores_{i}"
    previous = segments_mod.previous_as_of(out_dir, as_of)
    previous_file = segments_mod.partition_dir(out_dir, previous) / segments_mod.MEMBERSHIPS_FILE
    if previous is None:
        return relations, None
    spark.read.parquet(str(previous_file)).createOrReplaceTempView("segment_previous")
    relations["previous"] = "segment_previous"
    return relations, previous_file


def _member_tables(spark: SparkSession, sources: AsOfSources, namespaces: list[str]) -> dict[str, DataFrame]:
    """The members' identities and consent, for the files written on the driver."""
    members = "(SELECT DISTINCT profile_id FROM segment_rows WHERE status <> 'held_back')"
    listed = ", ".join(f"'{ns}'" for ns in namespaces)
    return {
        "member_identities": spark.sql(f"""
            SELECT i.profile_id, i.namespace, i.value FROM {sources.identity_map} i
            WHERE i.profile_id IN {members} AND i.namespace IN ({listed})
        """),
        "member_profiles": spark.sql(f"""
            SELECT profile_id, {", ".join(CONSENT_COLUMNS)} FROM {sources.profiles}
            WHERE profile_id IN {members}
        """),
    }


def qualify(
    spark: SparkSession,
    sources: AsOfSources,
    segments: list[segments_mod.Segment],
    features: DataFrame,
    scores: dict[str, list[str]],
    out_dir: str | Path,
    as_of: dt.date,
    namespaces: list[str],
) -> segments_mod.Qualification:
    """Qualify ``segments`` at ``as_of`` on Spark; write ``out_dir/as_of=<date>/`` exactly as the
    DuckDB engine does (``out_dir`` and the score partitions on this machine's file system)."""
    relations, previous_file = _register_inputs(spark, features, scores, out_dir, as_of)
    sql = segments_mod.qualification_sql(
        segments,
        "SELECT * FROM segment_features",
        scores,
        previous_file,
        as_of,
        dialect="spark",
        relations=relations,
    )
    rows = spark.sql(sql).localCheckpoint()
    rows.createOrReplaceTempView("segment_rows")
    con = duckdb.connect()
    try:
        for name, frame in (("_segment_rows", rows), *_member_tables(spark, sources, namespaces).items()):
            con.register(f"_{name}_arrow", frame.toArrow())
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _{name}_arrow")
            con.unregister(f"_{name}_arrow")
        return segments_mod.write_qualification(
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
