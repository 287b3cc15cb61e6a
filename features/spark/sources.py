"""Reading event files on Spark the way DuckDB reads them, and writing doubles as DuckDB does.

* :func:`read_source`: the rows of Parquet, CSV or JSON-lines files with the source file and
  row DuckDB reports (``_source_file``, ``_source_row``): they order duplicates and name
  bad rows, so both engines must agree on them;
* :func:`duckdb_double_text`: a double as DuckDB's ``CAST(x AS VARCHAR)`` spells it, which
  the event ids derived from a row's content depend on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from propensity.core.errors import UserError
from propensity.features.spark.session import file_uri, first_line, normalised_uri
from propensity.features.spark.session import functions as _f

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


# Row numbers within a partition live in the low 33 bits of monotonically_increasing_id.
_ROW_BITS = 33


def read_source(spark: SparkSession, files: list[str], sources: list[str], fmt: str) -> DataFrame:
    """The raw rows of ``files`` with ``_source_file`` (named as in ``sources``) and ``_source_row``.

    ``_source_row`` is what DuckDB reports: the 1-based row in its file for Parquet, the
    1-based row across all files in list order for CSV and JSON lines. Every column of a
    CSV or JSON file is read as text, so a bad value becomes a bad row, not a failed read.
    """
    from pyspark.errors import PySparkException

    F = _f()
    display = sources[0] if len(sources) == 1 else sources[0].rsplit("/", 1)[0]
    try:
        groups = _read_groups(spark, files, fmt)
    except PySparkException as error:
        first = str(error).strip().splitlines()[0]
        hint = (
            "; Spark reads no nanosecond Parquet timestamps: write microseconds, or set "
            "engine.spark.conf spark.sql.legacy.parquet.nanosAsLong: true"
            if "NANOS" in first
            else ""
        )
        raise UserError(f"{display}: cannot read events: {first}{hint}") from None
    if "_corrupt_record" in groups[0].columns:
        raise UserError(f"{display}: cannot read events: malformed JSON")
    columns: list[str] = []
    for group in groups:
        columns += [c for c in group.columns if c not in columns]
    uris = spark.createDataFrame(
        [(file_uri(spark, f), s, i) for i, (f, s) in enumerate(zip(files, sources, strict=True))],
        "_uri string, _source_file string, _file_order int",
    )
    parts = [
        group.select(
            *(F.col(f"`{c}`") for c in group.columns),
            normalised_uri(F.col("_metadata.file_path")).alias("_uri"),
            *([F.col("_metadata.row_index").alias("_row_index")] if fmt == "parquet" else []),
            F.monotonically_increasing_id().alias("_mid"),
        )
        for group in groups
    ]
    raw = parts[0]
    for part in parts[1:]:
        raw = raw.unionByName(part, allowMissingColumns=True)
    frame = raw.join(F.broadcast(uris), "_uri")
    if fmt == "parquet":
        return frame.select(*columns, "_source_file", (F.col("_row_index") + 1).alias("_source_row"))
    return _rows_across_files(spark, frame, columns)


def _rows_across_files(spark: SparkSession, frame: DataFrame, columns: list[str]) -> DataFrame:
    """``_source_row`` for CSV and JSON lines: the 1-based row across all files in list order.

    A file's rows keep their order across Spark's partitions (splits of one file are read in
    offset order), and within a partition they are contiguous: a small table of
    (file, partition) blocks gives each row its place in the whole input.
    """
    F = _f()
    frame = frame.withColumn("_part", F.shiftright("_mid", _ROW_BITS)).withColumn(
        "_pos", F.col("_mid").bitwiseAND((1 << _ROW_BITS) - 1)
    )
    blocks = (
        frame.groupBy("_file_order", "_part")
        .agg(F.count(F.lit(1)).alias("n"), F.min("_pos").alias("first_pos"))
        .orderBy("_file_order", "_part")
        .collect()
    )
    before, offsets = 0, []
    for block in blocks:
        offsets.append((block["_file_order"], block["_part"], before - block["first_pos"]))
        before += block["n"]
    offset_frame = spark.createDataFrame(offsets, "_file_order int, _part long, _offset long")
    return frame.join(F.broadcast(offset_frame), ["_file_order", "_part"]).select(
        *columns, "_source_file", (F.col("_offset") + F.col("_pos") + 1).alias("_source_row")
    )


def _read_groups(spark: SparkSession, files: list[str], fmt: str) -> list[DataFrame]:
    """The files as DataFrames with one schema each (one for Parquet and JSON)."""
    reader = spark.read
    if fmt == "parquet":
        return [reader.option("mergeSchema", "true").parquet(*files)]
    if fmt == "csv":
        # Spark reads every CSV file with the first one's columns, by position; DuckDB matches
        # them by name. Files are read in groups of one header each, then unioned by name.
        by_header: dict[str, list[str]] = {}
        for f in files:
            by_header.setdefault(first_line(spark, f), []).append(f)
        return [reader.option("header", "true").csv(group) for group in by_header.values()]
    return [reader.option("primitivesAsString", "true").option("mode", "PERMISSIVE").json(files)]


def duckdb_double_text(column: Column) -> Column:
    """A double as DuckDB's ``CAST(x AS VARCHAR)`` writes it (Python's ``repr``).

    Java writes ``1.0E7`` and ``1.0E-4`` where DuckDB writes ``10000000.0`` and ``0.0001``:
    the shortest digits are the same, only the layout moves. Plain layout for exponents
    -4..15, ``1.5e-07`` style outside.
    """
    F = _f()
    java = column.cast("string")
    pattern = r"^(-?)([0-9])\.([0-9]+)E(-?[0-9]+)$"
    sign = F.regexp_extract(java, pattern, 1)
    digits = F.regexp_replace(
        F.concat(F.regexp_extract(java, pattern, 2), F.regexp_extract(java, pattern, 3)), "0+$", ""
    )
    exponent = F.regexp_extract(java, pattern, 4).cast("int")
    length = F.length(digits)

    def tail(start: Column | int) -> Column:  # digits from 1-based position ``start`` on
        return F.substring(digits, start, length)

    plain_big = F.when(
        length - 1 <= exponent, F.concat(digits, F.repeat(F.lit("0"), exponent - length + 1), F.lit(".0"))
    ).otherwise(F.concat(F.substring(digits, 1, exponent + 1), F.lit("."), tail(exponent + 2)))
    plain_small = F.concat(F.lit("0."), F.repeat(F.lit("0"), -exponent - 1), digits)
    mantissa = F.when(length > 1, F.concat(F.substring(digits, 1, 1), F.lit("."), tail(2))).otherwise(digits)
    scientific = F.concat(
        mantissa,
        F.lit("e"),
        F.when(exponent < 0, F.lit("-")).otherwise(F.lit("+")),
        # At least two digits (lpad would also cut 300 down to 30).
        F.when(F.abs(exponent) < 10, F.lit("0")).otherwise(F.lit("")),
        F.abs(exponent).cast("string"),
    )
    layout = (
        F.when(exponent >= 16, scientific)
        .when(exponent >= 0, plain_big)
        .when(exponent >= -4, plain_small)
        .otherwise(scientific)
    )
    return (
        F.when(column.isNull(), F.lit(None).cast("string"))
        .when(F.isnan(column), F.lit("nan"))
        .when(column == float("inf"), F.lit("inf"))
        .when(column == float("-inf"), F.lit("-inf"))
        .when(~java.contains("E"), java)
        .otherwise(F.concat(sign, layout))
    )
