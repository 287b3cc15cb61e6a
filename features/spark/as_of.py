"""The identity graph at an as-of date on Spark: :mod:`propensity.features.identity.as_of` with
the events, profiles and outcomes as Spark views.

Only the components that ``identity_unsettled`` names are ever rebuilt at a date, and they
are few (the rest of the graph is settled: its events pass through unchanged). Their
identities, links and attribute rows are small, so they are collected on the driver and
rebuilt there by DuckDB's own :class:`~propensity.features.identity.as_of.IdentityGraph`
(the same code, so the same profiles and ids at every date); its ``identity_as_of`` and
``identity_as_of_changed`` come back to Spark as small views, and everything that touches
the events (filtering, re-attribution, outcomes) is Spark SQL over the big views.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import duckdb

from propensity.core.config import IdentityConfig
from propensity.features.connection import fetch_arrow
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.as_of import (
    AsOfSources,
    GraphOutcomes,
    IdentityGraph,
    events_as_of_sql,
    identities_as_of_sql,
)
from propensity.features.spark.session import functions as _f
from propensity.features.sql import SPARK, sql_ident

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _col(name: str):
    """A column of any name (backquoted: names may hold dots)."""
    return _f().col(SPARK.ident(name))


def _tag(as_of: dt.date) -> str:
    return as_of.strftime("%Y%m%d")


def _ts(as_of: dt.date) -> str:
    return f"TIMESTAMP_NTZ '{as_of} 00:00:00'"


class SparkIdentityGraph(GraphOutcomes):
    """The stored identity graph on Spark, seen as of dates (``IdentityGraph`` on Spark).

    ``tables``: the DataFrames ingest writes (``events``, ``profiles``, ``identity_map``,
    ``identity_links``, ``identity_unsettled`` and, when present, ``profile_attributes``).
    Views it creates: ``identity_as_of`` (as_of, node_key, profile_id, final_key) and
    ``identity_as_of_changed`` (as_of, profile_key) for every date prepared so far, and
    per date ``events_as_of_<yyyymmdd>``, ``profiles_as_of_<...>``, ``identity_map_as_of_<...>``.
    """

    dialect = SPARK  # outcomes_sql: Spark SQL over the big views

    def __init__(self, spark: SparkSession, identity: IdentityConfig, tables: dict[str, DataFrame]) -> None:
        self.spark, self.identity, self.tables = spark, identity, tables
        self.events = "events"
        self._local = self._collect_unsettled()
        self._graph = IdentityGraph(self._local, identity)
        self._publish()

    def _collect_unsettled(self) -> duckdb.DuckDBPyConnection:
        """A driver-side DuckDB holding the unsettled components' identities, links and
        attribute rows (and every ``identity_unsettled`` row)."""
        F = _f()
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        unsettled = self.tables["identity_unsettled"]
        components = unsettled.select("component").distinct()
        nodes = self.tables["identity_map"].join(F.broadcast(components), "component")
        keys = nodes.select("node_key")
        local = {
            "identity_unsettled": unsettled,
            "identity_map": nodes.select(
                "namespace", "value", "node_key", "component", "first_seen", "profile_id", "profile_key"
            ),
            "identity_links": self.tables["identity_links"].join(
                F.broadcast(keys.withColumnRenamed("node_key", "a")), "a"
            ),
        }
        attributes = self.tables.get("profile_attributes")
        if attributes is not None:
            local["profile_attributes"] = attributes.join(
                F.broadcast(keys.withColumnRenamed("node_key", "anchor_key")), "anchor_key"
            ).select(*attributes.columns)
        for name, frame in local.items():
            table = frame.toArrow()  # Arrow keeps dates and decimals as they are
            con.register(f"_{name}", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}")
            con.unregister(f"_{name}")
        return con

    def _publish(self) -> None:
        """The driver's ``identity_as_of`` tables as the Spark views of the same name."""
        for name, schema in (
            ("identity_as_of", "as_of date, node_key int, profile_id string, final_key int"),
            ("identity_as_of_changed", "as_of date, profile_key int"),
        ):
            # As Arrow: at scale a date rebuilds hundreds of thousands of identities.
            table = fetch_arrow(self._local, f"SELECT * FROM {name} ORDER BY ALL")
            frame = (
                self.spark.createDataFrame(table)
                if table.num_rows
                else self.spark.createDataFrame([], schema)
            )
            typed = [
                f"CAST({column} AS {kind}) AS {column}"
                for column, kind in (c.split() for c in schema.split(", "))
            ]
            frame.selectExpr(*typed).createOrReplaceTempView(name)

    def prepare(self, as_ofs: list[dt.date]) -> None:
        """Build the graph at each date not built yet (on the driver, as DuckDB does)."""
        built = {r[0] for r in self._local.execute("SELECT as_of FROM identity_as_of_dates").fetchall()}
        if set(as_ofs) - built:
            self._graph.prepare(as_ofs)
            self._publish()

    def _changed(self, as_of: dt.date) -> DataFrame:
        return self.spark.sql(f"SELECT profile_key FROM identity_as_of_changed WHERE as_of = DATE '{as_of}'")

    def _rebuilt_attributes(self, as_of: dt.date) -> tuple[DataFrame, list[str]]:
        """Attributes of the profiles rebuilt at ``as_of`` (from the rows whose first identity
        they hold), computed on the driver by DuckDB's ``attributes_sql``."""
        from propensity.features.identity.stitching import attributes_sql

        con = self._local
        nodes = f"(SELECT node_key, profile_id FROM identity_as_of WHERE as_of = DATE '{as_of}')"
        if "profile_attributes" in self.tables:
            sql, columns = attributes_sql(con, self.identity, nodes)
        else:  # no profile-attributes file: consent not given
            columns = list(CONSENT_COLUMNS)
            sql = f"SELECT DISTINCT profile_id, {', '.join(f'NULL AS {c}' for c in columns)} FROM {nodes}"
        schema = self.tables["profiles"].select("profile_id", *(_col(c) for c in columns)).schema
        table = fetch_arrow(
            con, f"SELECT profile_id, {', '.join(sql_ident(c) for c in columns)} FROM ({sql})"
        )
        if not table.num_rows:
            return self.spark.createDataFrame([], schema), columns
        # Arrow, then the profiles' own types (a DuckDB VARCHAR or DATE is Spark's string or date).
        frame = self.spark.createDataFrame(table)
        return frame.select(*(_col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields)), columns

    def sources(self, as_of: dt.date) -> AsOfSources:
        """Spark views of the events, profiles and identities at ``as_of``."""
        F = _f()
        self.prepare([as_of])
        tag, columns = _tag(as_of), self.spark.table(self.events).columns
        events_sql = events_as_of_sql(as_of, _ts(as_of), self.events, columns, SPARK)
        self.spark.sql(events_sql).createOrReplaceTempView(f"events_as_of_{tag}")

        rebuilt, attribute_columns = self._rebuilt_attributes(as_of)
        kept = (
            self.tables["profiles"]
            .join(F.broadcast(self._changed(as_of)), "profile_key", "left_anti")
            .select("profile_id", *map(_col, attribute_columns))
        )
        kept.unionByName(rebuilt).createOrReplaceTempView(f"profiles_as_of_{tag}")

        identities = self.spark.sql(identities_as_of_sql(as_of, _ts(as_of)))
        identities.createOrReplaceTempView(f"identity_map_as_of_{tag}")
        return AsOfSources(as_of, f"events_as_of_{tag}", f"profiles_as_of_{tag}", f"identity_map_as_of_{tag}")
