"""Connected components for identity stitching on Spark, written as DataFrame operations.

:func:`connected_components` is the large-star / small-star iteration (Kiveris et al.,
"Connected Components in MapReduce and Beyond", SoCC 2014): O(log² n) rounds of joins and
group-bys, however long the chains in the graph. (The guardrail splits, which need each
component's own graph, run per component: :mod:`propensity.features.spark.identity`.)

Nodes are long integers; edges are undirected pairs given in any orientation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from propensity.features.spark.session import functions as _f

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _undirected(edges: DataFrame) -> DataFrame:
    """Edges as (child, parent) with child > parent: one row per undirected pair, no loops."""
    F = _f()
    return (
        edges.where(F.col("a") != F.col("b"))
        .select(F.greatest("a", "b").alias("child"), F.least("a", "b").alias("parent"))
        .distinct()
    )


def _large_star(edges: DataFrame) -> DataFrame:
    """Each node's larger neighbours re-attach to the smallest node of its neighbourhood."""
    F = _f()
    both = edges.select(F.col("child").alias("u"), F.col("parent").alias("v")).union(
        edges.select(F.col("parent").alias("u"), F.col("child").alias("v"))
    )
    smallest = both.groupBy("u").agg(F.least(F.min("v"), F.col("u")).alias("m"))
    return (
        both.where(F.col("v") > F.col("u"))
        .join(smallest, "u")
        .select(F.col("v").alias("child"), F.col("m").alias("parent"))
        .distinct()
    )


def _small_star(edges: DataFrame) -> DataFrame:
    """Each node and its smaller neighbours attach to the smallest of them."""
    F = _f()
    smallest = edges.groupBy("child").agg(F.min("parent").alias("m"))
    moved = (
        edges.join(smallest, "child")
        .where(F.col("parent") != F.col("m"))
        .select(F.col("parent").alias("child"), F.col("m").alias("parent"))
    )
    return moved.union(smallest.select("child", F.col("m").alias("parent"))).distinct()


def _is_star_forest(edges: DataFrame) -> bool:
    """True when every child has one parent and no parent is a child: each star is a component."""
    F = _f()
    children = edges.groupBy("child").agg(F.count(F.lit(1)).alias("parents"))
    if children.where(F.col("parents") > 1).limit(1).count():
        return False
    parents = edges.select(F.col("parent").alias("child")).distinct()
    return parents.join(children, "child").limit(1).count() == 0


def connected_components(nodes: DataFrame, edges: DataFrame, max_rounds: int = 100) -> DataFrame:
    """(node, component) for every node of ``nodes`` (column ``node``), where ``component`` is
    the smallest node connected to it through ``edges`` (columns ``a``, ``b``).

    Each round is a large-star then a small-star step; both keep the components, and the
    edges end as one star per component around its smallest node. Rounds are checkpointed,
    so the query plan stays small however many rounds a graph needs.
    """
    F = _f()
    current = _undirected(edges).localCheckpoint()
    for _ in range(max_rounds):
        current = _small_star(_large_star(current)).localCheckpoint()
        if _is_star_forest(current):
            break
    else:  # pragma: no cover - a graph of 2^100 nodes
        raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
    return nodes.join(
        current.select(F.col("child").alias("node"), F.col("parent").alias("component")), "node", "left"
    ).select("node", F.coalesce("component", "node").alias("component"))
