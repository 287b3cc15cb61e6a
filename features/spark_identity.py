"""Identity stitching on Spark: the graph, guardrails and profile ids of
:mod:`propensity.features.identity`, as DataFrame operations.

The graph is kept as **links with their first-seen time**: an event row joins its first
identity (in namespace precedence order) to each of its others, and a link's ``first_seen``
is the earliest event that carried it (a node alone on a row is a link to itself). Links
from the profile-attributes file carry no time: they are today's view, known from the start.
A graph "as of" a date is then the same algorithm on the links seen before it
(:func:`links_as_of`).

Components come from the large-star / small-star iteration
(:func:`propensity.features.spark_graph.connected_components`); the guardrails split them as
DuckDB does (two values of a unique namespace: nearest-anchor split, ties alone; more
identities than ``max_identities_per_profile``: the anonymous ones alone), and
``profile_id = 'p_' || left(sha256(min(node)), 16)`` of each final group, so both engines
give the same ids to the same identities.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from propensity.core.config import IdentityConfig
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity import SEPARATOR, Collapse, StitchResult
from propensity.features.spark_graph import connected_components, nearest_seeds
from propensity.features.spark_ordering import number_rows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def _f():
    from pyspark.sql import functions

    return functions


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


def identity_links(
    events: DataFrame,
    identity: IdentityConfig,
    attributes: DataFrame | None = None,
    attribute_namespaces: list[str] | None = None,
) -> DataFrame:
    """(src, dst, first_seen) links between identities, from events and profile attributes.

    ``src`` is a row's first identity, ``dst`` each of its identities (``src`` itself too, so
    that a lone identity is in the graph); ``first_seen`` is the earliest event timestamp
    with that link, NULL for links only the attributes file shows (known from the start).
    """
    F = _f()
    namespaces = identity.namespaces
    # Distinct identity tuples first: billions of events share far fewer tuples.
    tuples = events.groupBy(*namespaces).agg(F.min("timestamp").alias("first_seen"))
    sources = [tuples.select(_node_list(namespaces).alias("ids"), "first_seen")]
    if attributes is not None:
        present = attribute_namespaces or [n for n in namespaces if n in attributes.columns]
        sources.append(
            attributes.select(
                _node_list(present).alias("ids"), F.lit(None).cast("timestamp_ntz").alias("first_seen")
            )
        )
    rows = sources[0] if len(sources) == 1 else sources[0].unionByName(sources[1])
    exploded = rows.where(F.size("ids") > 0).select(
        F.col("ids")[0].alias("src"), F.explode("ids").alias("dst"), "first_seen"
    )
    return exploded.groupBy("src", "dst").agg(
        # NULL (always known) wins over any time.
        F.when(F.max(F.col("first_seen").isNull()), F.lit(None))
        .otherwise(F.min("first_seen"))
        .alias("first_seen")
    )


def links_as_of(links: DataFrame, as_of: dt.date | None) -> DataFrame:
    """The links observed before ``as_of`` (midnight UTC); all of them when ``as_of`` is None."""
    if as_of is None:
        return links
    F = _f()
    cutoff = F.lit(dt.datetime.combine(as_of, dt.time())).cast("timestamp_ntz")
    return links.where(F.col("first_seen").isNull() | (F.col("first_seen") < cutoff))


def _namespace(node: Column) -> Column:
    return _f().split_part(node, _f().lit(SEPARATOR), _f().lit(1))


def stitch(spark: SparkSession, links: DataFrame, identity: IdentityConfig) -> tuple[DataFrame, StitchResult]:
    """The identity map (namespace, value, node, profile_id, profile_key) of ``links``.

    Same groups, same ``profile_id`` and the same ``profile_key`` (profiles numbered 0, 1, ...
    in profile_id order) as :func:`propensity.features.identity.stitch` on the same rows;
    the result counts profiles and reports every guardrail split.
    """
    F = _f()
    names = (
        links.select(F.col("src").alias("node")).union(links.select(F.col("dst").alias("node"))).distinct()
    )
    nodes = names.select(
        "node", F.monotonically_increasing_id().alias("idx"), _namespace(F.col("node")).alias("namespace")
    )
    nodes = nodes.localCheckpoint()
    ids = nodes.select("node", "idx")
    edges = (
        links.where(F.col("src") != F.col("dst"))
        .join(ids.withColumnRenamed("node", "src").withColumnRenamed("idx", "a"), "src")
        .join(ids.withColumnRenamed("node", "dst").withColumnRenamed("idx", "b"), "dst")
        .select("a", "b")
        .localCheckpoint()
    )
    components = connected_components(nodes.select(F.col("idx").alias("node")), edges)
    graph = nodes.join(components.withColumnRenamed("node", "idx"), "idx").localCheckpoint()

    unique, anonymous = identity.unique_namespaces, identity.anonymous_namespaces
    per_component = graph.groupBy("component").agg(
        F.count(F.lit(1)).alias("size"),
        *(
            F.sum(F.when(F.col("namespace") == ns, 1).otherwise(0)).alias(f"unique_{i}")
            for i, ns in enumerate(unique)
        ),
        F.min("node").alias("first_node"),
    )
    conflict = F.lit(False)
    for i in range(len(unique)):
        conflict = conflict | (F.col(f"unique_{i}") > 1)
    limit = identity.max_identities_per_profile
    suspicious = per_component.where(conflict | (F.col("size") > limit)).withColumn("conflict", conflict)
    suspicious = suspicious.localCheckpoint()

    # Groups start as components; a conflicting component is split around its unique-namespace
    # anchors: each node joins its nearest anchor, nodes equally near two go alone.
    in_conflict = graph.join(suspicious.where("conflict").select("component"), "component")
    seeds = in_conflict.where(F.col("namespace").isin(unique)).select(F.col("idx").alias("node"))
    conflict_edges = edges.join(in_conflict.select(F.col("idx").alias("a")), "a")
    any_conflict = suspicious.where("conflict").limit(1).count() > 0
    nearest = (
        (nearest_seeds(seeds, conflict_edges) if any_conflict else seeds.withColumn("seed", F.col("node")))
        .groupBy("node")
        .agg(F.count(F.lit(1)).alias("seeds"), F.min("seed").alias("seed"))
    )
    nearest = nearest.select(
        F.col("node").alias("idx"),
        F.when(F.col("seeds") == 1, F.col("seed")).otherwise(F.col("node")).alias("split_group"),
        (F.col("seeds") > 1).alias("tied"),
    )
    grouped = graph.join(nearest, "idx", "left").select(
        "idx",
        "node",
        "namespace",
        "component",
        F.coalesce("split_group", "component").alias("grp"),
        F.coalesce("tied", F.lit(False)).alias("tied"),
    )
    # A group still over the limit keeps its known identities; its anonymous ones go alone.
    sizes = grouped.groupBy("grp").agg(F.count(F.lit(1)).alias("group_size"))
    alone = (F.col("group_size") > limit) & F.col("namespace").isin(anonymous or [""])
    final = (
        grouped.join(sizes, "grp")
        .withColumn("separated", alone)
        .withColumn("group", F.struct("grp", F.when(alone, F.col("idx")).otherwise(F.lit(-1)).alias("own")))
    )
    profile_ids = final.groupBy("group").agg(
        F.concat(F.lit("p_"), F.substring(F.sha2(F.min("node"), 256), 1, 16)).alias("profile_id")
    )
    keyed = number_rows(profile_ids.select("profile_id"), "profile_id", "profile_key")
    mapped = final.join(profile_ids, "group").join(keyed, "profile_id").localCheckpoint()
    identity_map = mapped.select(
        "namespace",
        F.substring(F.col("node"), F.length("namespace") + len(SEPARATOR) + 1, F.length("node")).alias(
            "value"
        ),
        "node",
        "profile_id",
        F.col("profile_key").cast("int").alias("profile_key"),
    ).orderBy("profile_id", "node")

    counts = mapped.agg(
        F.count_distinct("profile_id").alias("profiles"),
        F.count_distinct(F.when(~F.col("namespace").isin(anonymous or [""]), F.col("profile_id"))).alias(
            "known"
        ),
        F.count(F.lit(1)).alias("identities"),
    ).first()
    splits = (
        mapped.join(suspicious.select("component"), "component")
        .groupBy("component")
        .agg(
            F.count_distinct("profile_id").alias("profiles_after_split"),
            F.sum((F.col("tied") | F.col("separated")).cast("int")).alias("separated"),
        )
    )
    collapses = [
        Collapse(
            reason="unique_namespace_conflict" if row["conflict"] else "too_many_identities",
            identities=int(row["size"]),
            unique_values={ns: int(row[f"unique_{i}"]) for i, ns in enumerate(unique)},
            profiles_after_split=int(row["profiles_after_split"]),
            separated_identities=int(row["separated"]),
        )
        for row in suspicious.join(splits, "component").orderBy("first_node").collect()
    ]
    result = StitchResult(
        profiles=int(counts["profiles"]),
        known_profiles=int(counts["known"]),
        identities=int(counts["identities"]),
        collapses=collapses,
    )
    return identity_map, result


def attribute_events(events: DataFrame, identity_map: DataFrame, identity: IdentityConfig) -> DataFrame:
    """``events`` with ``profile_id`` (through each row's anchor identity), ``new_identities``
    and ``profile_key``, as :func:`propensity.features.identity.attribute_events`.

    ``new_identities`` counts the identities seen on this event for the first time (earliest
    timestamp, ties broken by event_id), so "identities known by as_of" is a sum over events.
    """
    F = _f()
    firsts = (
        events.select("timestamp", "event_id", F.explode(_node_list(identity.namespaces)).alias("node"))
        .groupBy("node")
        .agg(F.min(F.struct("timestamp", "event_id")).alias("first"))
        .groupBy(F.col("first.event_id").alias("event_id"))
        .agg(F.count(F.lit(1)).cast("int").alias("new_identities"))
    )
    keys = identity_map.select(F.col("node").alias("_anchor"), "profile_id", "profile_key")
    return (
        events.withColumn("_anchor", anchor(identity.namespaces))
        .join(keys, "_anchor")
        .join(firsts, "event_id", "left")
        .select(
            "profile_id",
            *(F.col(f"`{c}`") for c in events.columns),
            F.coalesce("new_identities", F.lit(0)).alias("new_identities"),
            "profile_key",
        )
    )


def build_profiles(
    identity_map: DataFrame,
    stitched: DataFrame,
    identity: IdentityConfig,
    attributes: DataFrame | None = None,
    attribute_namespaces: list[str] | None = None,
) -> DataFrame:
    """One row per profile_id with identity facts, activity and attributes, as
    :func:`propensity.features.identity.build_profiles` (any 'n' consent wins, then any 'y';
    other attributes from the profile's first attributes row)."""
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
    others = [
        c for c in attributes.columns if c not in namespaces and c not in (*CONSENT_COLUMNS, "_source_row")
    ]
    keys = identity_map.select(F.col("node").alias("_anchor"), "profile_id")
    attrs = (
        attributes.withColumn("_anchor", anchor(namespaces))
        .join(keys, "_anchor")
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
