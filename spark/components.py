"""Connected components in Spark SQL, by alternating large-star and small-star.

The algorithm of Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014):
the edges are kept as ``(hi, lo)`` with ``hi > lo``; *large-star* links every neighbour of a
node that is larger than it to the smallest node of its neighbourhood, *small-star* links the
node and its smaller neighbours to the smallest of them. Both keep the components and shrink
their diameter, so a chain of n nodes is done in O(log n) rounds; when a round changes nothing,
every edge joins a node to its component's smallest node. GraphFrames would do the same, but
its jar cannot be fetched on the platforms this runs on, and these are four joins.

A component is labelled by its smallest node (as :func:`master_data.cluster.cluster_records`
labels one: the smallest record ID; Spark compares strings by UTF-8 bytes, which orders them as
Python does).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

__all__ = ["MAX_ROUNDS", "components"]

MAX_ROUNDS = 64
"""Rounds before giving up: each round at least shrinks a path by a third, so 64 reach far
beyond any graph that fits a cluster."""


def components(edges: DataFrame, left: str = "left", right: str = "right") -> DataFrame:
    """``node, component`` for every node at either end of ``edges`` (columns ``left`` and
    ``right``, undirected, self-loops and repeats allowed): its component's smallest node.
    Nodes without an edge are not in ``edges`` and so not in the result."""
    # checkpoints kept lazily: each round's edges are worked out and kept by the one job that
    # compares them with the round before, not by a job of their own
    current = _canonical(edges.select(F.col(left).alias("a"), F.col(right).alias("b")))
    current = current.localCheckpoint(eager=False)
    for _ in range(MAX_ROUNDS):
        after = _small_star(_large_star(current)).localCheckpoint(eager=False)
        if _same(after, current):
            return _labels(after)
        current = after
    raise RuntimeError(
        f"connected components did not settle in {MAX_ROUNDS} rounds of large-star/small-star; "
        "report this as a bug with the night's run ID"
    )


def _canonical(pairs: DataFrame) -> DataFrame:
    """Each edge once as ``(hi, lo)``, ``hi > lo``, self-loops dropped."""
    return (
        pairs.where(F.col("a") != F.col("b"))
        .select(F.greatest("a", "b").alias("hi"), F.least("a", "b").alias("lo"))
        .distinct()
    )


def _neighbours(current: DataFrame) -> DataFrame:
    """``u, v`` for each node and each of its neighbours."""
    return current.select(F.col("hi").alias("u"), F.col("lo").alias("v")).unionAll(
        current.select(F.col("lo").alias("u"), F.col("hi").alias("v"))
    )


def _large_star(current: DataFrame) -> DataFrame:
    """Each neighbour ``v > u`` of every node ``u`` linked to the smallest of u's
    neighbourhood (u included)."""
    near = _neighbours(current)
    least = near.groupBy("u").agg(F.least(F.min("v"), F.col("u")).alias("m"))
    return (
        near.join(least, "u")
        .where(F.col("v") > F.col("u"))
        .select(F.col("v").alias("hi"), F.col("m").alias("lo"))
        .distinct()
    )


def _small_star(current: DataFrame) -> DataFrame:
    """Every node ``hi`` and its smaller neighbours linked to the smallest of them."""
    least = current.groupBy("hi").agg(F.min("lo").alias("m"))
    joined = current.join(least, "hi")
    smaller = joined.select(F.col("lo").alias("a"), F.col("m").alias("b"))
    itself = joined.select(F.col("hi").alias("a"), F.col("m").alias("b"))
    return _canonical(smaller.unionAll(itself))


def _same(one: DataFrame, other: DataFrame) -> bool:
    """Whether two sets of distinct edges are equal: no edge is in only one of them (one job,
    where counting both and subtracting took three)."""
    sides = one.select("hi", "lo").unionAll(other.select("hi", "lo"))
    return sides.groupBy("hi", "lo").count().where(F.col("count") != 2).isEmpty()


def _labels(stars: DataFrame) -> DataFrame:
    """Settled edges join every node to its component's smallest node: each node's label."""
    near = _neighbours(stars)
    return (
        near.groupBy("u")
        .agg(F.least(F.min("v"), F.col("u")).alias("component"))
        .select(F.col("u").alias("node"), "component")
    )
