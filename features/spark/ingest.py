"""Staging events on Spark: the contract, reasons, hashing and de-duplication of
:mod:`propensity.features.ingest.staging`, as DataFrame operations.

Same inputs, same rows out: timestamps in UTC, XDM event types mapped, email / phone
normalised and SHA-256 hashed, ``event_id`` derived from the row when absent (the same MD5 of
the same text), bad rows with the first reason they break (``contract.BAD_ROW_REASONS``
order), duplicates dropped keeping the first row by (source file, source row). The tests
hold the staged rows equal to DuckDB's.

Where the engines' text differs, DuckDB's spelling is reproduced: doubles are written as
DuckDB writes them (``1e+16``, not Java's ``1.0E16``) inside the derived event ids.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from propensity.core.config import IdentityConfig
from propensity.core.errors import UserError
from propensity.features.contract import (
    BAD_ROW_REASONS,
    CONSENT_COLUMNS,
    CONSENT_GIVEN,
    CONSENT_REFUSED,
    DEFAULT_FUTURE_TOLERANCE_HOURS,
    HASHED_IDENTITIES,
    MAX_ABS_QUANTITY,
    MAX_ABS_REVENUE,
    MAX_IDENTITY_CHARS,
    NUMERIC_COLUMNS,
    REQUIRED_COLUMNS,
    STRING_COLUMNS,
    UNRECOGNISED_CONSENT,
    XDM_EVENT_TYPES,
    consent_message,
    future_limit,
)
from propensity.features.ingest.inputs import EVENT_FILE_SUFFIXES, event_files
from propensity.features.ingest.staging import StagedEvents, present_identity_columns
from propensity.features.spark.session import SparkInput, is_remote, list_files, qualified
from propensity.features.spark.session import functions as _f
from propensity.features.spark.sources import duckdb_double_text, read_source

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def _types():
    from pyspark.sql import types

    return types


def _text(frame_types: dict[str, object], name: str) -> Column:
    """``nullif(trim(CAST(x AS VARCHAR)), '')``, doubles spelled as DuckDB spells them."""
    F = _f()
    return F.nullif(F.trim(_as_text(F.col(f"`{name}`"), frame_types[name])), F.lit(""))


def _as_text(column: Column, data_type) -> Column:
    T = _types()
    if isinstance(data_type, T.DoubleType | T.FloatType):
        return duckdb_double_text(column.cast("double"))
    return column.cast("string")


def _null_text() -> Column:
    return _f().lit(None).cast("string")


def _timestamp(frame_types: dict[str, object], display: str, nanos_as_long: bool) -> Column:
    """The event time as a UTC ``timestamp_ntz`` (the session runs in UTC), NULL if unparseable."""
    F, T = _f(), _types()
    col, data_type = F.col("`timestamp`"), frame_types["timestamp"]
    if isinstance(data_type, T.TimestampNTZType):
        return col
    if isinstance(data_type, T.TimestampType | T.DateType):
        return col.cast("timestamp_ntz")
    if isinstance(data_type, T.LongType) and nanos_as_long:
        # Nanosecond Parquet timestamps arrive as longs under spark.sql.legacy.parquet.nanosAsLong;
        # DuckDB keeps their microseconds.
        # DuckDB rounds them to the nearest microsecond; exact integer arithmetic, half up.
        micros = F.expr("(`timestamp` + 500 - pmod(`timestamp` + 500, 1000)) div 1000")
        return F.timestamp_micros(micros).cast("timestamp_ntz")
    if isinstance(data_type, T.StringType):
        text = F.trim(col)
        # Spellings DuckDB reads and Spark's cast does not: 2025/01/31 dates, 24:00 midnight.
        text = F.regexp_replace(text, r"^(\d{4})/(\d{1,2})/(\d{1,2})", "$1-$2-$3")
        midnight = r"^(\d{4}-\d{1,2}-\d{1,2})[ T]24:00(:00(\.0*)?)?$"
        parsed = text.try_cast("timestamp")
        next_day = F.date_add(F.regexp_extract(text, midnight, 1).try_cast("date"), 1).cast("timestamp")
        return F.when(text.rlike(midnight), next_day).otherwise(parsed).cast("timestamp_ntz")
    raise UserError(
        f"{display}: column `timestamp` has type {data_type.simpleString()}; "
        "expected a timestamp or ISO-8601 string"
    )


def _numeric(frame_types: dict[str, object], name: str, display: str) -> tuple[Column, Column]:
    """(parsed value, condition that the present value did not parse), as in staging._numeric_sql."""
    F, T = _f(), _types()
    if name not in frame_types:
        return F.lit(None).cast("double"), F.lit(False)
    data_type = frame_types[name]
    col = F.col(f"`{name}`")
    if isinstance(data_type, T.StringType):
        present = F.nullif(F.trim(col), F.lit(""))
        parsed = present.try_cast("double")
        return parsed, present.isNotNull() & parsed.isNull()
    if isinstance(data_type, T.NumericType):
        return col.cast("double"), F.lit(False)
    raise UserError(f"{display}: column `{name}` has type {data_type.simpleString()}; expected a number")


def identity_columns(frame_types: dict[str, object], identity: IdentityConfig) -> dict[str, Column]:
    """Each identity namespace as a column, hashing raw email / phone (staging.identity_sql)."""
    F = _f()
    out: dict[str, Column] = {}
    for namespace in identity.namespaces:
        raw = next((r for r, hashed in HASHED_IDENTITIES.items() if hashed == namespace), None)
        parts = []
        if raw is not None and raw in frame_types:
            text = _as_text(F.col(f"`{raw}`"), frame_types[raw])
            if raw == "email":
                normalised = F.nullif(F.lower(F.trim(text)), F.lit(""))
            else:
                # Phone numbers compare on their digits (and a leading +), not their formatting.
                normalised = F.nullif(F.regexp_replace(text, "[^0-9+]", ""), F.lit(""))
            parts.append(F.sha2(normalised, 256))
        if namespace in frame_types:
            value = _text(frame_types, namespace)
            parts.append(F.lower(value) if namespace in HASHED_IDENTITIES.values() else value)
        out[namespace] = F.coalesce(*parts) if parts else _null_text()
    return out


@dataclass
class SparkStaged:
    """Staged events on Spark: the counts of :class:`StagedEvents` and the DataFrames behind them."""

    summary: StagedEvents
    clean: DataFrame  # clean_events: de-duplicated, ``timestamp`` in UTC, _source_file / _source_row
    bad: DataFrame  # bad_events: every column of the parsed row and its ``reason``
    counts = property(lambda self: self.summary)  # the engine seam's name for the counts

    def close(self) -> None:
        """Release the cached clean events (the staging stops here)."""
        self.clean.unpersist()


def _check_columns(types: dict[str, object], display: str, identity: IdentityConfig) -> None:
    """The required columns and at least one identity column, or one line naming what is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in types]
    if missing:
        raise UserError(
            f"{display}: missing required column `{missing[0]}` "
            f"(events need {', '.join(REQUIRED_COLUMNS)} and at least one identity column)"
        )
    if not present_identity_columns(types, identity):
        accepted = [*identity.namespaces, *HASHED_IDENTITIES]
        raise UserError(f"{display}: no identity column; expected at least one of {', '.join(accepted)}")


def _typed(
    spark: SparkSession, source: DataFrame, types: dict[str, object], display: str, identity
) -> DataFrame:
    """Every column parsed to its contract type (``ts``, the event type with XDM names mapped,
    identities, text, numbers and their parse failures, the given event id), extras kept."""
    F = _f()
    revenue, revenue_bad = _numeric(types, "revenue", display)
    quantity, quantity_bad = _numeric(types, "quantity", display)
    raw_type = _text(types, "event_type")
    mapped = None
    for xdm, canonical in XDM_EVENT_TYPES.items():
        is_xdm = F.lower(raw_type) == xdm.lower()
        mapped = F.when(is_xdm, canonical) if mapped is None else mapped.when(is_xdm, canonical)
    strings = {
        c: (F.lower(_text(types, c)) if c in ("channel", "product_category") else _text(types, c))
        if c in types
        else _null_text()
        for c in STRING_COLUMNS
    }
    reserved = {
        *REQUIRED_COLUMNS,
        *STRING_COLUMNS,
        *NUMERIC_COLUMNS,
        "event_id",
        *identity.namespaces,
        *HASHED_IDENTITIES,
        "filename",
        "file_row_number",
    }
    extras = [c for c in types if c not in reserved and c not in ("_source_file", "_source_row")]
    return source.select(
        _timestamp(types, display, _nanos_as_long(spark)).alias("ts"),
        mapped.otherwise(raw_type).alias("event_type"),
        *(expr.alias(n) for n, expr in identity_columns(types, identity).items()),
        *(expr.alias(c) for c, expr in strings.items()),
        revenue.alias("revenue"),
        revenue_bad.alias("_revenue_bad"),
        quantity.alias("quantity"),
        quantity_bad.alias("_quantity_bad"),
        (_text(types, "event_id") if "event_id" in types else _null_text()).alias("_given_id"),
        *(F.col(f"`{c}`") for c in extras),
        "_source_file",
        "_source_row",
    )


def _renamed(typed: DataFrame, mapping: dict[str, str]) -> DataFrame:
    """The project's event-type renames applied to the (XDM-mapped) ``event_type``."""
    if not mapping:
        return typed
    F = _f()
    renamed = None
    for source, target in mapping.items():
        is_source = F.col("event_type") == source
        renamed = F.when(is_source, target) if renamed is None else renamed.when(is_source, target)
    return typed.withColumn("event_type", renamed.otherwise(F.col("event_type")))


def _content(identity: IdentityConfig) -> Column:
    """A row's payload as text, spelled as DuckDB's: the derived event id hashes it, and
    duplicates whose payloads differ are counted apart by it."""
    F = _f()
    return F.concat_ws(
        "|",
        F.col("ts").cast("string"),
        F.col("event_type"),
        *(F.coalesce(F.col(n), F.lit("")) for n in identity.namespaces),
        *(F.coalesce(F.col(c), F.lit("")) for c in STRING_COLUMNS),
        F.coalesce(duckdb_double_text(F.col("revenue")), F.lit("")),
        F.coalesce(duckdb_double_text(F.col("quantity")), F.lit("")),
    )


def _derived_id(identity: IdentityConfig) -> Column:
    """The event id derived from the row's content when none is given, spelled as DuckDB's."""
    F = _f()
    return F.concat(F.lit("e_"), F.md5(_content(identity)))


def _bad_reason(identity: IdentityConfig, as_of: dt.date | None, future_tolerance_hours: int) -> Column:
    """Why a typed row is bad (the first reason, in DuckDB's order), NULL for a good one."""
    F = _f()
    any_identity = F.lit(False)
    long_identity = F.lit(False)
    for n in identity.namespaces:
        any_identity = any_identity | F.col(n).isNotNull()
        long_identity = long_identity | F.coalesce(F.length(F.col(n)) > MAX_IDENTITY_CHARS, F.lit(False))
    future = F.col("ts") >= F.lit(future_limit(as_of, future_tolerance_hours)).cast("timestamp_ntz")
    # NaN and infinities fail ``abs(x) <= limit`` on Spark as on DuckDB.
    implausible_revenue = ~F.coalesce(F.abs(F.col("revenue")) <= MAX_ABS_REVENUE, F.lit(True))
    implausible_quantity = ~F.coalesce(F.abs(F.col("quantity")) <= MAX_ABS_QUANTITY, F.lit(True))
    return (
        F.when(F.col("ts").isNull(), "unparseable_timestamp")
        .when(F.col("event_type").isNull(), "missing_event_type")
        .when(~any_identity, "no_identity")
        .when(long_identity, "invalid_identity")
        .when(F.col("_revenue_bad") | implausible_revenue, "invalid_revenue")
        .when((F.col("event_type") == "purchase") & (F.col("revenue") < 0), "negative_revenue")
        .when(F.col("_quantity_bad") | implausible_quantity, "invalid_quantity")
        .when(future, "future_timestamp")
    )


def _first_copies(valid: DataFrame, identity: IdentityConfig) -> tuple[DataFrame, int]:
    """Each event_id once (duplicates are rare, so find the repeated ids, then keep each one's
    first row by (file, row), as DuckDB does), and how many dropped copies carried another
    payload than the kept row (conflicting duplicates, counted apart as DuckDB counts them)."""
    F = _f()
    firsts = (
        valid.groupBy("event_id")
        .agg(
            F.count(F.lit(1)).alias("_copies"), F.min(F.struct("_source_file", "_source_row")).alias("_first")
        )
        .where(F.col("_copies") > 1)
        .select("event_id", "_first")
    )
    first = (F.col("_first._source_file") == F.col("_source_file")) & (
        F.col("_first._source_row") == F.col("_source_row")
    )
    copies = valid.join(firsts, "event_id").withColumn("_payload", F.md5(_content(identity)))
    kept_payload = copies.where(first).select("event_id", F.col("_payload").alias("_kept"))
    conflicting = (
        copies.where(~first).join(kept_payload, "event_id").where(F.col("_payload") != F.col("_kept")).count()
    )
    kept = valid.join(firsts, "event_id", "left").where(F.col("_first").isNull() | first).drop("_first")
    return kept, int(conflicting)


def _counts(
    parsed: DataFrame, bad: DataFrame, clean: DataFrame, columns: list[str], max_rows: int, conflicting: int
) -> StagedEvents:
    """Rows in = clean + bad + duplicates, bad rows by reason and the first few of them."""
    by_reason = {r["reason"]: r["count"] for r in parsed.groupBy("reason").count().collect()}
    rows_in = sum(by_reason.values())
    rows_bad = rows_in - by_reason.get(None, 0)
    rows_clean = clean.count()
    first_bad = [
        {"file": r["_source_file"], "row": r["_source_row"], "reason": r["reason"]}
        for r in bad.orderBy("_source_file", "_source_row").limit(int(max_rows)).collect()
    ]
    return StagedEvents(
        rows_in=rows_in,
        rows_bad=rows_bad,
        rows_duplicate=rows_in - rows_bad - rows_clean,
        rows_conflicting=conflicting,
        rows_clean=rows_clean,
        bad_by_reason={r: by_reason[r] for r in BAD_ROW_REASONS if by_reason.get(r)},
        first_bad=first_bad,
        columns=columns,
    )


def stage_events(
    spark: SparkSession,
    inputs: SparkInput,
    identity: IdentityConfig,
    as_of: dt.date | None = None,
    max_reported_rows: int = 5,
    future_tolerance_hours: int = DEFAULT_FUTURE_TOLERANCE_HOURS,
    event_type_mapping: dict[str, str] | None = None,
) -> SparkStaged:
    """Validate and normalise raw events, exactly as :func:`features.staging.stage_events`
    (XDM names mapped, then ``event_type_mapping``'s renames).

    Rows in = clean + bad + duplicates; the parsed rows are cached once for the counts and
    every later step.
    """
    F = _f()
    source = read_source(spark, inputs.events, list(inputs.sources), inputs.fmt)
    types = {field.name: field.dataType for field in source.schema.fields}
    columns = [c for c in types if c not in ("_source_file", "_source_row")]
    _check_columns(types, inputs.display, identity)
    typed = _renamed(_typed(spark, source, types, inputs.display, identity), event_type_mapping or {})
    kept = [c for c in typed.columns if c not in ("_given_id", "_revenue_bad", "_quantity_bad")]
    parsed = typed.select(
        F.coalesce(F.col("_given_id"), _derived_id(identity)).alias("event_id"),
        *(F.col(f"`{c}`") for c in kept),
        _bad_reason(identity, as_of, future_tolerance_hours).alias("reason"),
    ).persist()
    bad = parsed.where(F.col("reason").isNotNull())
    valid = parsed.where(F.col("reason").isNull()).drop("reason")
    kept, conflicting = _first_copies(valid, identity)
    clean = kept.withColumnRenamed("ts", "timestamp").persist()
    summary = _counts(parsed, bad, clean, columns, max_reported_rows, conflicting)
    return SparkStaged(summary=summary, clean=clean, bad=bad)


def stage_profiles(
    spark: SparkSession, path: str, source_name: str, identity: IdentityConfig, on_bad_rows: str = "fail"
) -> tuple[DataFrame, list[str]]:
    """The profile-attributes file normalised as in :func:`features.staging.stage_profiles`.

    Returns (profile_attributes, the identity namespaces it carries); rows without any
    identity value are a UserError naming them.
    """
    F = _f()
    if is_remote(path):
        files = sources = list_files(spark, qualified(path))
    else:
        local_files, _ = event_files(Path(path))
        files, sources = [qualified(p) for p in local_files], [str(p) for p in local_files]
    fmt = _format_of(files[0])
    source = read_source(spark, files, sources, fmt)
    types = {field.name: field.dataType for field in source.schema.fields}
    if not present_identity_columns(types, identity):
        accepted = [*identity.namespaces, *HASHED_IDENTITIES]
        raise UserError(
            f"{source_name}: no identity column to key profiles by; expected one of {', '.join(accepted)}"
        )
    ids = identity_columns(types, identity)
    namespaces = [n for n in identity.namespaces if n in types or _raw_for(n) in types]
    consent = {}
    for c in CONSENT_COLUMNS:
        if c in types:
            flag = F.lower(_text(types, c))
            consent[c] = (
                F.when(flag.isin(*CONSENT_GIVEN), F.lit("y"))
                .when(flag.isin(*CONSENT_REFUSED), F.lit("n"))
                # outside the vocabulary: refused below, or opted out with quarantine
                .when(flag.isNotNull(), F.lit("n" if on_bad_rows == "quarantine" else UNRECOGNISED_CONSENT))
                .otherwise(_null_text())
            )
        else:
            consent[c] = _null_text()
    skip = {*identity.namespaces, *HASHED_IDENTITIES, *CONSENT_COLUMNS, "filename", "file_row_number"}
    attributes = [c for c in types if c not in skip and c not in ("_source_file", "_source_row")]
    profiles = source.select(
        *(ids[n].alias(n) for n in namespaces),
        *(expr.alias(c) for c, expr in consent.items()),
        *(F.col(f"`{c}`") for c in attributes),
        "_source_row",
    ).persist()
    no_id = F.lit(True)
    for n in namespaces:
        no_id = no_id & F.col(n).isNull()
    rows = [r["_source_row"] for r in profiles.where(no_id).orderBy("_source_row").limit(5).collect()]
    if rows:
        raise UserError(
            f"{source_name}: profile rows without any identity value (rows {', '.join(map(str, rows))})"
        )
    if on_bad_rows != "quarantine":
        _refuse_unrecognised_consent(profiles, source, types, source_name)
    return profiles, namespaces


def _refuse_unrecognised_consent(
    profiles: DataFrame, source: DataFrame, types: dict[str, object], source_name: str
) -> None:
    """A consent value outside the vocabulary stops the step in one line naming the file, the
    column, the values and the first rows (as DuckDB's staging does)."""
    F = _f()
    for c in CONSENT_COLUMNS:
        if c not in types:
            continue
        unknown = profiles.where(F.col(c) == UNRECOGNISED_CONSENT)
        count = unknown.count()
        if count:
            first = unknown.orderBy("_source_row").limit(5).select("_source_row").collect()
            rows = [int(r["_source_row"]) for r in first]
            raw = source.where(F.col("_source_row").isin(rows)).select(_text(types, c).alias("v")).distinct()
            values = sorted(str(r["v"]) for r in raw.collect())
            raise UserError(consent_message(source_name, c, count, values, rows))


def _raw_for(namespace: str) -> str | None:
    return next((r for r, hashed in HASHED_IDENTITIES.items() if hashed == namespace), None)


def _nanos_as_long(spark: SparkSession) -> bool:
    return spark.conf.get("spark.sql.legacy.parquet.nanosAsLong", "false") == "true"


def _format_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if suffix not in EVENT_FILE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type '{suffix}'; expected .parquet, .csv or .jsonl")
    return EVENT_FILE_SUFFIXES[suffix]
