"""Segments qualified on Spark, written by the very code the DuckDB engine uses.

:func:`propensity.features.activation.segments.qualify_on` compiles every segment's rule to Spark
SQL from the same parsed rules and writes the result; :class:`SparkSegmentRows` is where that
query runs: against the feature snapshot, the previous date's memberships and the model scores
as temp views. The resulting rows (one per membership: far fewer than the events) and the
members' identities come to the driver as Arrow and are written by
:func:`propensity.features.activation.segments.write_qualification`: the same files, statuses,
consent hold-back, summary and fingerprints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.as_of import AsOfSources

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


@dataclass
class SparkSegmentRows:
    """A qualification's query run on Spark over the sources as of its date (``out_dir`` and
    the score partitions on this machine's file system)."""

    spark: SparkSession
    sources: AsOfSources
    dialect = "spark"

    def inputs(self, features: DataFrame, scores, previous_file) -> tuple[str, dict[str, str]]:
        """The temp views the compiled rules read: (the features' query, relations by name)."""
        # Computed once: every segment's rule reads it.
        features.localCheckpoint().createOrReplaceTempView("segment_features")
        relations = {}
        for i, model in enumerate(sorted(scores)):
            self.spark.read.parquet(*scores[model]).createOrReplaceTempView(f"segment_scores_{i}")
            relations[model] = f"segment_scores_{i}"
        if previous_file is not None:
            self.spark.read.parquet(str(previous_file)).createOrReplaceTempView("segment_previous")
            relations["previous"] = "segment_previous"
        return "SELECT * FROM segment_features", relations

    @contextmanager
    def rows(self, sql: str, namespaces) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, str]]:
        """The rows and the members' identities and consent on a new DuckDB connection."""
        rows = self.spark.sql(sql).localCheckpoint()
        rows.createOrReplaceTempView("segment_rows")
        con = duckdb.connect()
        try:
            for name, frame in (("_segment_rows", rows), *self._member_tables(namespaces).items()):
                con.register(f"_{name}_arrow", frame.toArrow())
                con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _{name}_arrow")
                con.unregister(f"_{name}_arrow")
            yield con, "member_identities", "member_profiles"
        finally:
            con.close()

    def _member_tables(self, namespaces: list[str]) -> dict[str, DataFrame]:
        """The members' identities and consent, for the files written on the driver."""
        members = "(SELECT DISTINCT profile_id FROM segment_rows WHERE status <> 'held_back')"
        listed = ", ".join(f"'{ns}'" for ns in namespaces)
        return {
            "member_identities": self.spark.sql(f"""
                SELECT i.profile_id, i.namespace, i.value FROM {self.sources.identity_map} i
                WHERE i.profile_id IN {members} AND i.namespace IN ({listed})
            """),
            "member_profiles": self.spark.sql(f"""
                SELECT profile_id, {", ".join(CONSENT_COLUMNS)} FROM {self.sources.profiles}
                WHERE profile_id IN {members}
            """),
        }
