"""Identity stitching on Spark: the identity graph of :mod:`propensity.features.identity.stitching`, with
every table ingest writes (``identity_map``, ``identity_links``, ``identity_unsettled``) equal
to DuckDB's.

The rows, nodes and links are DataFrames: a row's identities (events grouped by their
identity tuple, profile-attributes rows) with the time first seen; nodes numbered in node
order (``node_key``); a row's first identity linked to each of its others, a link keeping
its earliest time. Components come from the large-star / small-star iteration
(:func:`propensity.features.spark.graph.connected_components`), numbered as SciPy numbers
them (in order of their smallest node). The guardrail splits and the times at which a
component was not yet its final profiles are then computed per component on the executors,
by the very NumPy functions DuckDB's ingest runs on the whole graph
(:func:`features.identity_graph.group_identities`, :func:`~.unsettled_intervals`): both are
component by component, so the answers are the same. ``profile_id = 'p_' ||
left(sha256(min(node)), 16)`` of each final group.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from propensity.core.config import IdentityConfig
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.graph import ALWAYS, Collapse, group_identities, unsettled_intervals
from propensity.features.identity.orders import ORDER_ID
from propensity.features.identity.stitching import SEPARATOR, StitchResult
from propensity.features.spark.graph import connected_components
from propensity.features.spark.ordering import number_rows
from propensity.features.spark.session import functions as _f

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# What the per-component pass returns: a node's group, an unsettled interval, or a split.
_COMPONENT_SCHEMA = "comp long, idx long, grp long, after long, until long, collapse string"


def _node_list(namespaces: list[str]) -> Column:
    """The row's identities as ``namespace:value`` nodes, in precedence order, NULLs left out."""
    F = _f()
    items = [F.concat(F.lit(n + SEPARATOR), F.col(n)) for n in namespaces]
    return F.filter(F.array(*items), lambda x: x.isNotNull())


def anchor(namespaces: list[str], alias: str | None = None) -> Column:
    """The node an event row is attributed through: its first identity in precedence order."""
    F = _f()
    prefix = f"{alias}." if alias else ""
    return F.coalesce(*(F.concat(F.lit(n + SEPARATOR), F.col(f"{prefix}{n}")) for n in namespaces))


def _micros(timestamp: Column) -> Column:
    """A timestamp as int64 µs since 1970 (UTC session), "from the start" (NULL) as ALWAYS."""
    F = _f()
    return F.coalesce(F.unix_micros(timestamp.cast("timestamp")), F.lit(ALWAYS))


def _timestamp(micros: Column) -> Column:
    F = _f()
    return F.when(micros == ALWAYS, F.lit(None)).otherwise(F.timestamp_micros(micros)).cast("timestamp_ntz")


def identity_rows(
    events: DataFrame,
    identity: IdentityConfig,
    attributes: DataFrame | None = None,
    attribute_namespaces: list[str] | None = None,
) -> DataFrame:
    """(ids, t): each distinct row of identities (nodes in precedence order) and when it was
    first seen (int64 µs; a profile-attributes row from midnight of its ``signup_date``, else
    :data:`ALWAYS`), as :func:`features.identity.stitch` gathers them."""
    F = _f()
    namespaces = identity.namespaces
    # Distinct identity tuples first: millions of events share far fewer tuples.
    tuples = events.groupBy(*namespaces).agg(_micros(F.min("timestamp")).alias("t"))
    rows = tuples.select(_node_list(namespaces).alias("ids"), "t")
    if attributes is not None:
        present = attribute_namespaces or [n for n in namespaces if n in attributes.columns]
        signed_up = (
            F.expr("try_cast(signup_date AS TIMESTAMP_NTZ)")
            if "signup_date" in attributes.columns
            else F.lit(None).cast("timestamp_ntz")
        )
        rows = rows.unionByName(
            attributes.select(_node_list(present).alias("ids"), _micros(signed_up).alias("t"))
        )
    return rows.groupBy("ids").agg(F.min("t").alias("t"))


@dataclass
class SparkGraph:
    """The stitched identity graph as DataFrames, and its counts."""

    identity_map: (
        DataFrame  # namespace, value, node, node_key, component, first_seen, profile_id, profile_key
    )
    identity_links: DataFrame  # a, b, first_seen
    identity_unsettled: DataFrame  # component, after, until
    result: StitchResult


def _per_component(identity: IdentityConfig):
    """The pandas function run once per component of more than one node."""

    def run(frame: pd.DataFrame) -> pd.DataFrame:
        comp = int(frame["comp"].iloc[0])
        nodes = frame[frame["a"].isna()].sort_values("idx")
        links = frame[frame["a"].notna()].sort_values(["a", "b"])
        idx = nodes["idx"].to_numpy(dtype=np.int64)
        src = np.searchsorted(idx, links["a"].to_numpy(dtype=np.int64))
        dst = np.searchsorted(idx, links["b"].to_numpy(dtype=np.int64))
        grouping = group_identities(nodes["namespace"].to_numpy(dtype=object), src, dst, identity)
        unsettled = unsettled_intervals(
            grouping, nodes["t"].to_numpy(dtype=np.int64), src, dst, links["t"].to_numpy(dtype=np.int64)
        )
        n_nodes, n_intervals, collapses = len(idx), len(unsettled.after), grouping.collapses
        size = n_nodes + n_intervals + len(collapses)

        def column(values: list, at: int) -> pd.Series:
            # Python ints, strings and None in object columns: Arrow reads them exactly as the
            # declared nullable longs and strings (pandas would make floats, or Arrow strings).
            out: list = [None] * size
            out[at : at + len(values)] = values
            return pd.Series(out, dtype=object)

        return pd.DataFrame(
            {
                "comp": np.full(size, comp, dtype=np.int64),
                "idx": column(idx.tolist(), 0),
                "grp": column(grouping.group.tolist(), 0),
                "after": column(unsettled.after.tolist(), n_nodes),
                "until": column(unsettled.until.tolist(), n_nodes),
                "collapse": column([json.dumps(asdict(c)) for c in collapses], n_nodes + n_intervals),
            }
        )

    return run


def _nodes_and_links(rows: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Every identity as a numbered node with its namespace and first-seen time, and the links
    between nodes seen on one row (each pair once, smaller index first, first seen)."""
    F = _f()
    nodes = number_rows(
        rows.select(F.explode("ids").alias("node"), "t").groupBy("node").agg(F.min("t").alias("t")),
        "node",
        "idx",
    )
    nodes = nodes.withColumn("namespace", F.split_part("node", F.lit(SEPARATOR), F.lit(1))).localCheckpoint()
    keys = nodes.select("node", "idx")
    links = (
        rows.where(F.size("ids") > 1)
        .select(F.col("ids")[0].alias("na"), F.explode(F.slice("ids", 2, 1 << 30)).alias("nb"), "t")
        .join(keys.withColumnRenamed("node", "na").withColumnRenamed("idx", "ia"), "na")
        .join(keys.withColumnRenamed("node", "nb").withColumnRenamed("idx", "ib"), "nb")
        .groupBy(F.least("ia", "ib").alias("a"), F.greatest("ia", "ib").alias("b"))
        .agg(F.min("t").alias("t"))
        .localCheckpoint()
    )
    return nodes, links


def _numbered_components(nodes: DataFrame, links: DataFrame) -> DataFrame:
    """Each node with ``comp``, its component numbered in the order of its smallest node (as SciPy
    numbers them)."""
    F = _f()
    smallest = connected_components(nodes.select(F.col("idx").alias("node")), links.select("a", "b"))
    numbered = number_rows(
        smallest.select(F.col("component").alias("smallest")).distinct(), "smallest", "comp"
    )
    return (
        nodes.join(smallest.withColumnRenamed("node", "idx"), "idx")
        .join(numbered.withColumnRenamed("smallest", "component"), "component")
        .drop("component")
        .localCheckpoint()
    )


def _components_split(graph: DataFrame, links: DataFrame, identity: IdentityConfig) -> DataFrame:
    """Every component of more than one node through the guardrails (pandas, once per
    component): its groups and the times it was in pieces."""
    F = _f()
    sizes = graph.groupBy("comp").agg(F.count(F.lit(1)).alias("size"))
    shared = graph.join(sizes.where("size > 1"), "comp")
    no_long, no_text = F.lit(None).cast("long"), F.lit(None).cast("string")
    inputs = shared.select(
        "comp", "idx", "namespace", no_long.alias("a"), no_long.alias("b"), "t"
    ).unionByName(
        links.join(graph.select(F.col("idx").alias("a"), "comp"), "a").select(
            "comp", no_long.alias("idx"), no_text.alias("namespace"), "a", "b", "t"
        )
    )
    return inputs.groupBy("comp").applyInPandas(_per_component(identity), _COMPONENT_SCHEMA).localCheckpoint()


def _identity_map(graph: DataFrame, per_component: DataFrame) -> DataFrame:
    """Each identity with its profile: a group is (component, label within it), label 0 for
    every unsplit component; profile ids hash the group's smallest node."""
    F = _f()
    groups = graph.join(
        per_component.where(F.col("grp").isNotNull()).select("comp", "idx", "grp"), ["comp", "idx"], "left"
    ).withColumn("grp", F.coalesce("grp", F.lit(0)))
    profile_ids = groups.groupBy("comp", "grp").agg(
        F.concat(F.lit("p_"), F.substring(F.sha2(F.min("node"), 256), 1, 16)).alias("profile_id")
    )
    profile_keys = number_rows(profile_ids.select("profile_id"), "profile_id", "profile_key")
    mapped = groups.join(profile_ids, ["comp", "grp"]).join(profile_keys, "profile_id")
    return mapped.select(
        "namespace",
        F.substring(F.col("node"), F.length("namespace") + len(SEPARATOR) + 1, 1 << 30).alias("value"),
        "node",
        F.col("idx").cast("int").alias("node_key"),
        F.col("comp").cast("int").alias("component"),
        _timestamp(F.col("t")).alias("first_seen"),
        "profile_id",
        F.col("profile_key").cast("int").alias("profile_key"),
    ).localCheckpoint()


def stitch(spark: SparkSession, rows: DataFrame, identity: IdentityConfig) -> SparkGraph:
    """The identity graph of ``rows`` (:func:`identity_rows`): the same tables, profile ids,
    keys and counts as :func:`propensity.features.identity.stitching.stitch` on the same rows."""
    F = _f()
    nodes, links = _nodes_and_links(rows.where(F.size("ids") > 0).localCheckpoint())
    graph = _numbered_components(nodes, links)
    per_component = _components_split(graph, links, identity)
    identity_map = _identity_map(graph, per_component)
    identity_links = links.select(
        F.col("a").cast("int").alias("a"),
        F.col("b").cast("int").alias("b"),
        _timestamp(F.col("t")).alias("first_seen"),
    )
    identity_unsettled = (
        per_component.where(F.col("until").isNotNull())
        .select(
            F.col("comp").cast("int").alias("component"),
            _timestamp(F.col("after")).alias("after"),
            _timestamp(F.col("until")).alias("until"),
        )
        .localCheckpoint()
    )
    return SparkGraph(
        identity_map,
        identity_links,
        identity_unsettled,
        _result(identity_map, identity_unsettled, per_component, identity),
    )


def _result(
    identity_map: DataFrame, unsettled: DataFrame, per_component: DataFrame, identity: IdentityConfig
):
    F = _f()
    anonymous = identity.anonymous_namespaces or [""]
    unsettled_components = unsettled.select("component").distinct()
    counts = identity_map.agg(
        F.count_distinct("profile_id").alias("profiles"),
        F.count_distinct(F.when(~F.col("namespace").isin(anonymous), F.col("profile_id"))).alias("known"),
        F.count(F.lit(1)).alias("identities"),
    ).first()
    unsettled_profiles = (
        identity_map.join(unsettled_components, "component").select("profile_id").distinct().count()
    )
    collapses = [
        Collapse(**json.loads(row["collapse"]))
        for row in per_component.where(F.col("collapse").isNotNull()).orderBy("comp").collect()
    ]
    return StitchResult(
        profiles=int(counts["profiles"]),
        known_profiles=int(counts["known"]),
        identities=int(counts["identities"]),
        collapses=collapses,
        unsettled_profiles=int(unsettled_profiles),
    )


def attribute_events(events: DataFrame, identity_map: DataFrame, identity: IdentityConfig) -> DataFrame:
    """``events`` with ``profile_id``, ``new_identities``, ``profile_key`` and ``anchor_key``, as
    :func:`propensity.features.identity.stitching.attribute_events`.

    ``new_identities`` counts the identities seen on this event for the first time (earliest
    timestamp, ties broken by event_id), so "identities known by as_of" is a sum over events;
    ``anchor_key`` is the ``node_key`` of the row's first identity, through which the graph at
    an as-of date attributes the event again.
    """
    F = _f()
    firsts = (
        events.select("timestamp", "event_id", F.explode(_node_list(identity.namespaces)).alias("node"))
        .groupBy("node")
        .agg(F.min(F.struct("timestamp", "event_id")).alias("first"))
        .groupBy(F.col("first.event_id").alias("event_id"))
        .agg(F.count(F.lit(1)).cast("int").alias("new_identities"))
    )
    keys = identity_map.select(F.col("node").alias("_anchor"), "profile_id", "profile_key", "node_key")
    return (
        _order_firsts(events.withColumn("_anchor", anchor(identity.namespaces)))
        .join(keys, "_anchor")
        .join(firsts, "event_id", "left")
        .select(
            "profile_id",
            *(F.col(f"`{c}`") for c in events.columns),
            F.coalesce("new_identities", F.lit(0)).alias("new_identities"),
            "profile_key",
            F.col("node_key").alias("anchor_key"),
            *_order_columns(ORDER_ID in events.columns),
        )
    )


def _order_firsts(events: DataFrame) -> DataFrame:
    """``events`` with each order's line count and revenue on its first line (``_order_lines``,
    ``_order_revenue``), as :func:`propensity.features.identity.orders.order_firsts_sql`."""
    if ORDER_ID not in events.columns:
        return events
    F = _f()
    lines = events.where((F.col("event_type") == "purchase") & F.col(ORDER_ID).isNotNull())
    firsts = lines.groupBy(ORDER_ID).agg(
        F.min(F.struct("timestamp", "event_id")).getField("event_id").alias("event_id"),
        F.count(F.lit(1)).cast("int").alias("_order_lines"),
        F.sum(F.col("revenue").cast("decimal(18,2)")).cast("double").alias("_order_revenue"),
    )
    return events.join(firsts.drop(ORDER_ID), "event_id", "left")


def _order_columns(has_order_id: bool) -> list[Column]:
    """``order_lines`` and ``order_revenue`` (:mod:`propensity.features.identity.orders`)."""
    F = _f()
    if not has_order_id:
        return [
            F.lit(None).cast("int").alias("order_lines"),
            F.lit(None).cast("double").alias("order_revenue"),
        ]
    line = (F.col("event_type") == "purchase") & F.col(ORDER_ID).isNotNull()
    return [
        F.when(line, F.coalesce(F.col("_order_lines"), F.lit(0))).alias("order_lines"),
        F.col("_order_revenue").alias("order_revenue"),
    ]


def anchor_attributes(
    attributes: DataFrame, identity_map: DataFrame, identity: IdentityConfig, namespaces: list[str]
) -> DataFrame:
    """``profile_attributes`` rows with their ``anchor_key`` (the ``node_key`` of the row's first
    identity), as :func:`propensity.features.identity.stitching.anchor_attributes`."""
    F = _f()
    keys = identity_map.select(F.col("node").alias("_anchor"), F.col("node_key").alias("anchor_key"))
    return attributes.withColumn("_anchor", anchor(namespaces)).join(keys, "_anchor").drop("_anchor")


def build_profiles(
    identity_map: DataFrame,
    stitched: DataFrame,
    identity: IdentityConfig,
    attributes: DataFrame | None = None,
    attribute_namespaces: list[str] | None = None,
) -> DataFrame:
    """One row per profile_id with identity facts, activity and attributes, as
    :func:`propensity.features.identity.stitching.build_profiles` (``attributes`` with ``anchor_key``;
    any 'n' consent wins, then any 'y'; other attributes from the profile's first row)."""
    F = _f()
    anonymous = identity.anonymous_namespaces or [""]
    facts = identity_map.groupBy("profile_id").agg(
        F.min("profile_key").alias("profile_key"),
        F.max(~F.col("namespace").isin(anonymous)).alias("is_known"),
        F.count(F.lit(1)).cast("int").alias("identity_count"),
        *(F.count(F.when(F.col("namespace") == ns, 1)).alias(f"{ns}_count") for ns in identity.namespaces),
    )
    activity = stitched.groupBy("profile_id").agg(
        F.min("timestamp").alias("first_seen"),
        F.max("timestamp").alias("last_seen"),
        F.count(F.lit(1)).alias("event_count"),
    )
    profiles = facts.join(activity, "profile_id", "left").withColumn(
        "event_count", F.coalesce("event_count", F.lit(0))
    )
    if attributes is None:
        return profiles.select("*", *(F.lit(None).cast("string").alias(c) for c in CONSENT_COLUMNS)).orderBy(
            "profile_id"
        )
    namespaces = attribute_namespaces or [n for n in identity.namespaces if n in attributes.columns]
    bookkeeping = (*CONSENT_COLUMNS, "_source_row", "anchor_key")
    others = [c for c in attributes.columns if c not in namespaces and c not in bookkeeping]
    keys = identity_map.select(F.col("node_key").alias("anchor_key"), "profile_id")
    attrs = (
        attributes.join(keys, "anchor_key")
        .groupBy("profile_id")
        .agg(
            *(
                F.when(F.max(F.col(c) == "n"), F.lit("n")).when(F.max(F.col(c) == "y"), F.lit("y")).alias(c)
                for c in CONSENT_COLUMNS
            ),
            # DuckDB's arg_min skips NULL values: the first row that has the attribute gives it.
            *(
                F.min_by(F.col(f"`{c}`"), F.when(F.col(f"`{c}`").isNotNull(), F.col("_source_row"))).alias(c)
                for c in others
            ),
        )
    )
    return profiles.join(attrs, "profile_id", "left").orderBy("profile_id")
