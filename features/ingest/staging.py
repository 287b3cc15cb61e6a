"""Staging events: validation, normalisation, PII hashing and de-duplication, as DuckDB SQL.

Everything runs as SQL over the files, so a 20M-row input never has to fit in a pandas
frame. Rows that break the contract (:mod:`propensity.features.contract`) are counted by
reason and either refused or quarantined.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

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
from propensity.features.ingest.dedup import drop_duplicates, materialise
from propensity.features.ingest.inputs import InputFiles, event_files, reader_sql
from propensity.features.sql import sql_ident, sql_string


def _timestamp_sql(column_type: str, display: str) -> str:
    col = sql_ident("timestamp")
    t = column_type.upper()
    if t.startswith("TIMESTAMP WITH TIME ZONE") or t == "TIMESTAMPTZ":
        return f"timezone('UTC', {col})"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"CAST({col} AS TIMESTAMP)"
    if t == "VARCHAR":
        # The session runs in UTC, so naive strings are read as UTC and offsets converted.
        return f"timezone('UTC', TRY_CAST(trim({col}) AS TIMESTAMPTZ))"
    raise UserError(
        f"{display}: column `timestamp` has type {column_type}; expected a timestamp or ISO-8601 string"
    )


def _numeric_sql(name: str, column_type: str | None, display: str) -> tuple[str, str]:
    """(parsed value, condition that the present value did not parse)."""
    if column_type is None:
        return "CAST(NULL AS DOUBLE)", "false"
    col = sql_ident(name)
    t = column_type.upper()
    if t == "VARCHAR":
        parsed = f"TRY_CAST(nullif(trim({col}), '') AS DOUBLE)"
        return parsed, f"(nullif(trim({col}), '') IS NOT NULL AND {parsed} IS NULL)"
    if any(k in t for k in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL", "NUMERIC")):
        return f"CAST({col} AS DOUBLE)", "false"
    raise UserError(f"{display}: column `{name}` has type {column_type}; expected a number")


def _text(name: str) -> str:
    return f"nullif(trim(CAST({sql_ident(name)} AS VARCHAR)), '')"


def identity_sql(columns: dict[str, str], identity: IdentityConfig) -> dict[str, str]:
    """SQL for each identity namespace, hashing raw email/phone (the raw value never leaves)."""
    out: dict[str, str] = {}
    for namespace in identity.namespaces:
        raw = next((r for r, hashed in HASHED_IDENTITIES.items() if hashed == namespace), None)
        parts = []
        if raw is not None and raw in columns:
            if raw == "email":
                normalised = f"nullif(lower(trim(CAST({sql_ident(raw)} AS VARCHAR))), '')"
            else:
                # Phone numbers compare on their digits (and a leading +), not their formatting.
                normalised = (
                    f"nullif(regexp_replace(CAST({sql_ident(raw)} AS VARCHAR), '[^0-9+]', '', 'g'), '')"
                )
            parts.append(f"sha256({normalised})")
        if namespace in columns:
            value = _text(namespace)
            parts.append(f"lower({value})" if namespace in HASHED_IDENTITIES.values() else value)
        out[namespace] = f"coalesce({', '.join(parts)})" if parts else "CAST(NULL AS VARCHAR)"
    return out


def present_identity_columns(columns: dict[str, str], identity: IdentityConfig) -> list[str]:
    """The identity namespaces ``columns`` can provide (raw email/phone count as their hashes)."""
    accepted = [*identity.namespaces, *(r for r, h in HASHED_IDENTITIES.items() if h in identity.namespaces)]
    return [c for c in accepted if c in columns]


@dataclass
class StagedEvents:
    """Result of :func:`stage_events`: DuckDB tables ``staged_events`` / ``bad_events``."""

    rows_in: int
    rows_bad: int
    rows_duplicate: int
    rows_clean: int
    bad_by_reason: dict[str, int]
    first_bad: list[dict]
    columns: list[str] = field(default_factory=list)
    # Of the duplicates dropped, those whose content differs from the kept row (same event_id,
    # another payload): a source problem, counted apart from plain re-deliveries.
    rows_conflicting: int = 0


def stage_events(
    con: duckdb.DuckDBPyConnection,
    files: InputFiles,
    identity: IdentityConfig,
    as_of: dt.date | None = None,
    max_reported_rows: int = 5,
    future_tolerance_hours: int = DEFAULT_FUTURE_TOLERANCE_HOURS,
    event_type_mapping: dict[str, str] | None = None,
    scratch: str | None = None,
    bucket_rows: int | None = None,
) -> StagedEvents:
    """Validate and normalise raw events into the temp view ``clean_events``.

    Event types: XDM names become canonical ones, then ``event_type_mapping`` (the project's
    ``ingest.event_type_mapping``) renames source types.

    Bad rows go to ``bad_events`` with a ``reason``; duplicates (same ``event_id``) are
    dropped keeping the first row in file order. Rows in = clean + bad + duplicates. Events
    from the day after ``as_of`` on (without ``as_of``: more than ``future_tolerance_hours``
    after now) are ``future_timestamp`` rows. ``scratch`` (an attached database) keeps the parsed
    rows on disk; ``bucket_rows`` bounds the duplicate search (:mod:`~.dedup`).
    """
    source = files.reader_sql()
    columns = describe(con, source, files.display)
    _check_event_columns(columns, files.display, identity)
    typed = _typed_sql(columns, identity, files, event_type_mapping)
    content = _content_sql(identity)
    parsed = f"""
        WITH src AS (
            SELECT *, {"file_row_number + 1" if files.fmt == "parquet" else "row_number() OVER ()"}
                   AS _source_row
            FROM {source}
        ), typed AS (SELECT {typed} FROM src)
        SELECT
            coalesce(_given_id, 'e_' || md5(concat_ws('|', {content}))) AS event_id,
            * EXCLUDE (_given_id, _revenue_bad, _quantity_bad),
            {_bad_reason_sql(identity, as_of, future_tolerance_hours)} AS reason
        FROM typed
    """
    # Parquet rows carry their file row number; other formats number rows as they are read.
    materialise(con, "parsed_events", parsed, scratch, ordered=files.fmt != "parquet")
    materialise(con, "bad_events", "SELECT * FROM parsed_events WHERE reason IS NOT NULL", scratch, False)
    conflicting = drop_duplicates(con, content, bucket_rows)
    return _staged_counts(con, list(columns), conflicting, max_reported_rows)


def _check_event_columns(columns: dict[str, str], display: str, identity: IdentityConfig) -> None:
    """The required columns and at least one identity column, or one line naming what is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"{display}: missing required column `{missing[0]}` "
            f"(events need {', '.join(REQUIRED_COLUMNS)} and at least one identity column)"
        )
    if not present_identity_columns(columns, identity):
        accepted = [*identity.namespaces, *HASHED_IDENTITIES]
        raise UserError(f"{display}: no identity column; expected at least one of {', '.join(accepted)}")


def _event_type_sql(event_type_mapping: dict[str, str] | None) -> str:
    """The event type: XDM names made canonical, then the project's renames."""
    xdm = " ".join(f"WHEN {sql_string(k.lower())} THEN {sql_string(v)}" for k, v in XDM_EVENT_TYPES.items())
    raw_type = _text("event_type")
    event_type = f"CASE lower({raw_type}) {xdm} ELSE {raw_type} END"
    if event_type_mapping:
        renames = " ".join(
            f"WHEN {sql_string(k)} THEN {sql_string(v)}" for k, v in event_type_mapping.items()
        )
        event_type = f"CASE {event_type} {renames} ELSE {event_type} END"
    return event_type


def _typed_sql(
    columns: dict[str, str],
    identity: IdentityConfig,
    files: InputFiles,
    event_type_mapping: dict[str, str] | None,
) -> str:
    """Every column of the source rows parsed to its contract type (with the parse failures
    of the numbers, the given event id), extra columns kept, and where each row came from."""
    ts = _timestamp_sql(columns["timestamp"], files.display)
    revenue, revenue_bad = _numeric_sql("revenue", columns.get("revenue"), files.display)
    quantity, quantity_bad = _numeric_sql("quantity", columns.get("quantity"), files.display)
    ids = identity_sql(columns, identity)
    strings = {
        c: (f"lower({_text(c)})" if c in ("channel", "product_category") else _text(c))
        if c in columns
        else "CAST(NULL AS VARCHAR)"
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
    extras = [c for c in columns if c not in reserved]
    given_id = _text("event_id") if "event_id" in columns else "CAST(NULL AS VARCHAR)"
    return f"""
        {ts} AS ts,
        {_event_type_sql(event_type_mapping)} AS event_type,
        {", ".join(f"{expr} AS {sql_ident(n)}" for n, expr in ids.items())},
        {", ".join(f"{expr} AS {c}" for c, expr in strings.items())},
        {revenue} AS revenue, {revenue_bad} AS _revenue_bad,
        {quantity} AS quantity, {quantity_bad} AS _quantity_bad,
        {given_id} AS _given_id,
        {"".join(f"{sql_ident(c)}, " for c in extras)}
        filename AS _source_file, _source_row
    """


def _content_sql(identity: IdentityConfig) -> str:
    """What an event says, as text: derives a missing event id, and tells a conflicting copy
    (same id, another payload) from a plain re-delivery."""
    return ", ".join(
        [
            "CAST(ts AS VARCHAR)",
            "event_type",
            *(f"coalesce({sql_ident(n)}, '')" for n in identity.namespaces),
            *(f"coalesce({c}, '')" for c in STRING_COLUMNS),
            "coalesce(CAST(revenue AS VARCHAR), '')",
            "coalesce(CAST(quantity AS VARCHAR), '')",
        ]
    )


def _bad_reason_sql(identity: IdentityConfig, as_of: dt.date | None, future_tolerance_hours: int) -> str:
    """The first contract rule a typed row breaks (NULL: none), in ``BAD_ROW_REASONS`` order."""
    limit = future_limit(as_of, future_tolerance_hours)
    as_of_check = f"ts >= TIMESTAMP {sql_string(limit.isoformat(sep=' '))}"
    any_identity = " OR ".join(f"{sql_ident(n)} IS NOT NULL" for n in identity.namespaces)
    long_identity = " OR ".join(f"length({sql_ident(n)}) > {MAX_IDENTITY_CHARS}" for n in identity.namespaces)
    # NaN and infinities fail ``abs(x) <= limit`` (NaN compares greater than any number).
    bad_revenue = f"_revenue_bad OR NOT coalesce(abs(revenue) <= {MAX_ABS_REVENUE}, true)"
    bad_quantity = f"_quantity_bad OR NOT coalesce(abs(quantity) <= {MAX_ABS_QUANTITY}, true)"
    return f"""CASE
        WHEN ts IS NULL THEN 'unparseable_timestamp'
        WHEN event_type IS NULL THEN 'missing_event_type'
        WHEN NOT ({any_identity}) THEN 'no_identity'
        WHEN coalesce({long_identity}, false) THEN 'invalid_identity'
        WHEN {bad_revenue} THEN 'invalid_revenue'
        WHEN event_type = 'purchase' AND revenue < 0 THEN 'negative_revenue'
        WHEN {bad_quantity} THEN 'invalid_quantity'
        WHEN {as_of_check} THEN 'future_timestamp'
    END"""


def _staged_counts(
    con: duckdb.DuckDBPyConnection, columns: list[str], conflicting: int, max_reported_rows: int
) -> StagedEvents:
    """Rows in = clean + bad + duplicates, bad rows by reason and the first few of them."""
    rows_in = con.execute("SELECT count(*) FROM parsed_events").fetchone()[0]
    rows_bad = con.execute("SELECT count(*) FROM bad_events").fetchone()[0]
    rows_clean = con.execute("SELECT count(*) FROM clean_events").fetchone()[0]
    by_reason = dict(
        con.execute("SELECT reason, count(*) FROM bad_events GROUP BY reason ORDER BY reason").fetchall()
    )
    first_bad = [
        {"file": r[0], "row": r[1], "reason": r[2]}
        for r in con.execute(
            f"SELECT _source_file, _source_row, reason FROM bad_events ORDER BY _source_file, _source_row "
            f"LIMIT {int(max_reported_rows)}"
        ).fetchall()
    ]
    return StagedEvents(
        rows_in=rows_in,
        rows_bad=rows_bad,
        rows_duplicate=rows_in - rows_bad - rows_clean,
        rows_conflicting=conflicting,
        rows_clean=rows_clean,
        bad_by_reason={r: by_reason.get(r, 0) for r in BAD_ROW_REASONS if by_reason.get(r)},
        first_bad=first_bad,
        columns=columns,
    )


def describe(con: duckdb.DuckDBPyConnection, source_sql: str, display: str) -> dict[str, str]:
    """Column name -> DuckDB type of a source, with an unreadable file as a UserError."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {source_sql}").fetchall()
    except duckdb.Error as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"{display}: cannot read events: {first_line}") from None
    return {row[0]: row[1] for row in rows}


def stage_profiles(
    con: duckdb.DuckDBPyConnection, path: Path, identity: IdentityConfig, on_bad_rows: str = "fail"
) -> list[str]:
    """Normalise the profile-attributes file into the temp table ``profile_attributes``.

    Identity columns are hashed like events; consent flags become 'y' / 'n' / NULL
    (missing means not given). A consent value outside the vocabulary is refused (file, column,
    rows named) or, with ``on_bad_rows="quarantine"``, counts as opted out ('n'). Returns the
    identity namespaces the file carries.
    """
    files, fmt = event_files(path)
    source = reader_sql(files, fmt)
    columns = describe(con, source, str(path))
    id_columns = present_identity_columns(columns, identity)
    if not id_columns:
        accepted = [*identity.namespaces, *HASHED_IDENTITIES]
        raise UserError(
            f"{path}: no identity column to key profiles by; expected one of {', '.join(accepted)}"
        )
    ids = identity_sql(columns, identity)
    namespaces = [n for n in identity.namespaces if ids[n] != "CAST(NULL AS VARCHAR)"]
    consent = _consent_sql(columns)
    skip = {*identity.namespaces, *HASHED_IDENTITIES, *CONSENT_COLUMNS, "filename", "file_row_number"}
    attributes = [c for c in columns if c not in skip]
    row_number = "file_row_number + 1" if fmt == "parquet" else "row_number() OVER ()"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE profile_attributes AS
        SELECT {", ".join(f"{ids[n]} AS {sql_ident(n)}" for n in namespaces)},
               {", ".join(f"{expr} AS {c}" for c, expr in consent.items())}
               {"".join(f", {sql_ident(c)}" for c in attributes)},
               {row_number} AS _source_row
        FROM {source}
    """)
    no_id = con.execute(
        "SELECT _source_row FROM profile_attributes WHERE "
        + " AND ".join(f"{sql_ident(n)} IS NULL" for n in namespaces)
        + " ORDER BY 1 LIMIT 5"
    ).fetchall()
    if no_id:
        rows = ", ".join(str(r[0]) for r in no_id)
        raise UserError(f"{path}: profile rows without any identity value (rows {rows})")
    _settle_unrecognised_consent(con, path, source, columns, on_bad_rows, row_number)
    return namespaces


def _consent_sql(columns: dict[str, str]) -> dict[str, str]:
    """Each consent column as 'y' / 'n' / NULL (not given), or the unrecognised marker."""
    given, refused = (", ".join(sql_string(v) for v in vs) for vs in (CONSENT_GIVEN, CONSENT_REFUSED))
    return {
        c: (
            f"CASE WHEN lower(trim({_text(c)})) IN ({given}) THEN 'y' "
            f"WHEN lower(trim({_text(c)})) IN ({refused}) THEN 'n' "
            f"WHEN {_text(c)} IS NOT NULL THEN {sql_string(UNRECOGNISED_CONSENT)} END"
        )
        if c in columns
        else "CAST(NULL AS VARCHAR)"
        for c in CONSENT_COLUMNS
    }


def _settle_unrecognised_consent(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    source: str,
    columns: dict[str, str],
    on_bad_rows: str,
    row_number: str,
) -> None:
    """An unrecognised consent value refused (file, column, rows, values named) or, with
    ``on_bad_rows="quarantine"``, counted as opted out ('n')."""
    for c in CONSENT_COLUMNS:
        if c not in columns:
            continue
        unknown = f"{c} = {sql_string(UNRECOGNISED_CONSENT)}"
        if on_bad_rows != "quarantine":
            count = con.execute(f"SELECT count(*) FROM profile_attributes WHERE {unknown}").fetchone()[0]
            if count:
                rows = [
                    int(r[0])
                    for r in con.execute(
                        f"SELECT _source_row FROM profile_attributes WHERE {unknown} ORDER BY 1 LIMIT 5"
                    ).fetchall()
                ]
                values = _raw_values(con, source, c, rows, row_number)
                raise UserError(consent_message(str(path), c, int(count), values, rows))
        con.execute(f"UPDATE profile_attributes SET {c} = 'n' WHERE {unknown}")


def _raw_values(
    con: duckdb.DuckDBPyConnection, source: str, column: str, rows: list[int], row_number: str
) -> list[str]:
    """The distinct raw values of ``column`` at source ``rows``, for an error message."""
    found = con.execute(
        f"SELECT DISTINCT {_text(column)} FROM (SELECT *, {row_number} AS _r FROM {source}) "
        f"WHERE _r IN ({', '.join(map(str, rows))}) ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in found]
