"""The journey queries on Spark: the same SQL text as DuckDB's (:mod:`propensity.features.journeys`),
in Spark's dialect, run through :class:`SparkRunner`; the figures after the query are shared."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import SparkSession

from propensity.features.sql import SPARK


class SparkRunner:
    """A SparkSession as a journey :class:`~propensity.features.journeys.engine.Runner`."""

    dialect = SPARK

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def query(self, sql: str) -> pa.Table:
        """The query's result as Arrow (collected to the driver: the results are per unit or
        per path, and the figures after them need them all)."""
        frame = self.spark.sql(sql)
        to_arrow = getattr(frame, "toArrow", None)
        if to_arrow is not None:
            return to_arrow()
        return pa.Table.from_pandas(frame.toPandas(), preserve_index=False)

    def register(self, name: str, table: pa.Table) -> None:
        """``name`` as a temp view of ``table``."""
        if table.num_rows:
            frame = self.spark.createDataFrame(table.to_pandas())
        else:
            from pyspark.sql.types import LongType, StringType, StructField, StructType

            kinds = {pa.string(): StringType(), pa.int64(): LongType()}
            schema = StructType([StructField(f.name, kinds[f.type]) for f in table.schema])
            frame = self.spark.createDataFrame([], schema)
        frame.createOrReplaceTempView(name)

    def columns(self, relation: str) -> set[str]:
        """The column names of a table or view."""
        return set(self.spark.table(relation).columns)
