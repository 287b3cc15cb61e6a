"""Order statistics over a whole DataFrame without a one-partition window.

A window with ``ORDER BY`` and no ``PARTITION BY`` (``row_number()``, ``cume_dist()``) moves
every row to one task: fine on a laptop, fatal on a billion rows. Here the rows are range-
partitioned by the ordering column instead, each range is numbered (or summed) on its own,
and a small table of per-range totals, collected on the driver, shifts every range by the
rows before it. Two shuffles, every task a slice of the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _ranges(frame: DataFrame, column: str, weight: str | None) -> tuple[DataFrame, DataFrame, int]:
    """``frame`` range-partitioned by ``column`` with ``_range`` (ascending with the values),
    each range's offset (the rows, or ``weight`` sum, in all earlier ranges) and the total."""
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention

    spark = frame.sparkSession
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions", "200"))
    ranged = (
        frame.repartitionByRange(partitions, column)
        .withColumn("_range", F.spark_partition_id())
        # Range bounds come from a sample: fixed once, so the totals and the rows agree.
        .localCheckpoint()
    )
    size = F.sum(weight) if weight else F.count(F.lit(1))
    totals = ranged.groupBy("_range").agg(size.alias("n")).orderBy("_range").collect()
    offsets, before = [], 0
    for row in totals:
        offsets.append((row["_range"], before))
        before += int(row["n"])
    return ranged, spark.createDataFrame(offsets or [(0, 0)], "_range int, _offset long"), before


def number_rows(frame: DataFrame, column: str, name: str) -> DataFrame:
    """``frame`` with ``name`` = 0, 1, 2, ... in ``column`` order (values assumed distinct)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    ranged, offsets, _ = _ranges(frame, column, None)
    within = Window.partitionBy("_range").orderBy(column)
    return (
        ranged.join(F.broadcast(offsets), "_range")
        .withColumn(name, F.row_number().over(within) - 1 + F.col("_offset"))
        .drop("_range", "_offset")
    )


def cumulative_counts(frame: DataFrame, column: str) -> tuple[DataFrame, int]:
    """(value, rows at or below it) for every distinct non-null value of ``column``, and the
    number of rows: ``cume_dist()`` of a value is its count over the total."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    counts = frame.where(F.col(column).isNotNull()).groupBy(column).agg(F.count(F.lit(1)).alias("_n"))
    ranged, offsets, total = _ranges(counts, column, "_n")
    running = (
        Window.partitionBy("_range").orderBy(column).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    cumulative = ranged.join(F.broadcast(offsets), "_range").select(
        column, (F.sum("_n").over(running) + F.col("_offset")).alias("cumulative")
    )
    return cumulative, total
