"""The event contract: reading, validation, normalisation, PII hashing and de-duplication.

Everything runs as DuckDB SQL over the files, so a 20M-row input never has to fit in a
pandas frame. The contract itself (columns, canonical event types, XDM names, channels) is
declared here once; see ARCHITECTURE.md for the prose version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from propensity.core.config import IdentityConfig
from propensity.core.errors import UserError
from propensity.features.engine import sql_ident, sql_string

CANONICAL_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "search",
    "email_send",
    "email_open",
    "email_click",
    "push_open",
    "app_launch",
    "call_center_call",
    "store_visit",
    "offer_redeemed",
    "login",
    "signup",
)

# Adobe Experience Platform (XDM) eventType values and the canonical names they map to.
XDM_EVENT_TYPES: dict[str, str] = {
    "web.webpagedetails.pageViews": "page_view",
    "commerce.productViews": "product_view",
    "commerce.productListAdds": "add_to_cart",
    "commerce.productListRemovals": "remove_from_cart",
    "commerce.checkouts": "checkout",
    "commerce.purchases": "purchase",
    "directMarketing.emailSent": "email_send",
    "directMarketing.emailOpened": "email_open",
    "directMarketing.emailClicked": "email_click",
    "application.launch": "app_launch",
}

CHANNELS: tuple[str, ...] = (
    "web",
    "mobile_app",
    "email",
    "sms",
    "push",
    "call_center",
    "store",
    "advertising",
)

# Raw PII columns and the hashed namespace each becomes on ingest.
HASHED_IDENTITIES: dict[str, str] = {"email": "email_sha256", "phone": "phone_sha256"}

REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "event_type")
STRING_COLUMNS: tuple[str, ...] = ("channel", "product_category", "sku", "campaign")
NUMERIC_COLUMNS: tuple[str, ...] = ("revenue", "quantity")

# Bad-row reasons, in the order they are checked: a row is reported under its first one.
BAD_ROW_REASONS: tuple[str, ...] = (
    "unparseable_timestamp",
    "missing_event_type",
    "no_identity",
    "invalid_revenue",
    "negative_revenue",
    "invalid_quantity",
    "future_timestamp",
)

EVENT_FILE_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}


@dataclass(frozen=True)
class InputFiles:
    """What a user's ``--events PATH`` resolves to."""

    events: list[Path]
    fmt: str  # parquet | csv | json
    profiles: Path | None = None
    ground_truth: Path | None = None
    ingested: Path | None = None  # an `ingest` output directory, ready to use
    display: str = ""

    @property
    def hive(self) -> bool:
        return self.fmt == "parquet" and any("=" in part for p in self.events for part in p.parts)


def _find_in_dir(directory: Path, stem: str) -> Path | None:
    for candidate in [directory / stem, *(directory / f"{stem}{suffix}" for suffix in EVENT_FILE_SUFFIXES)]:
        if candidate.exists():
            return candidate
    return None


def _event_files(path: Path) -> tuple[list[Path], str]:
    if path.is_file():
        fmt = EVENT_FILE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise UserError(
                f"{path}: unsupported file type '{path.suffix}'; expected .parquet, .csv or .jsonl"
            )
        return [path], fmt
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in EVENT_FILE_SUFFIXES and not p.name.startswith((".", "_"))
    )
    if not files:
        raise UserError(f"{path}: no event files (.parquet, .csv, .jsonl) found")
    formats = {EVENT_FILE_SUFFIXES[p.suffix.lower()] for p in files}
    if len(formats) > 1:
        raise UserError(f"{path}: mixes file types {sorted(formats)}; use one format per directory")
    return files, formats.pop()


def resolve_input(path: str | Path) -> InputFiles:
    """Find the events (and profiles / ground truth beside them) behind ``--events PATH``.

    PATH may be a single file, a directory of Parquet files (hive partitions too), a
    directory written by ``generate`` (``events/``, ``profiles.*``, ``ground_truth/``) or an
    ``ingest`` output directory (``manifest.json``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: events path does not exist")
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "events.parquet").exists():
        gt = path / "ground_truth"
        return InputFiles(
            events=[path / "events.parquet"],
            fmt="parquet",
            ingested=path,
            profiles=None,
            ground_truth=gt if gt.is_dir() else None,
            display=str(path),
        )
    if path.is_dir():
        events = _find_in_dir(path, "events")
        if events is not None:
            files, fmt = _event_files(events)
            gt = path / "ground_truth"
            return InputFiles(
                events=files,
                fmt=fmt,
                profiles=_find_in_dir(path, "profiles"),
                ground_truth=gt if gt.is_dir() else None,
                display=str(events),
            )
    files, fmt = _event_files(path)
    return InputFiles(events=files, fmt=fmt, display=str(path))


def reader_sql(files: list[Path], fmt: str, hive: bool = False) -> str:
    """A DuckDB table function reading ``files`` with their file name and row number."""
    names = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
    if fmt == "parquet":
        return (
            f"read_parquet({names}, union_by_name=true, filename=true, file_row_number=true"
            f"{', hive_partitioning=true' if hive else ''})"
        )
    if fmt == "csv":
        # All text: a bad value in one row must become a bad row, not a failed read.
        return f"read_csv({names}, all_varchar=true, header=true, union_by_name=true, filename=true)"
    return f"read_json({names}, format='newline_delimited', union_by_name=true, filename=true)"


def describe(con: duckdb.DuckDBPyConnection, source_sql: str, display: str) -> dict[str, str]:
    """Column name -> DuckDB type of a source, with an unreadable file as a UserError."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {source_sql}").fetchall()
    except duckdb.Error as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"{display}: cannot read events: {first_line}") from None
    return {row[0]: row[1] for row in rows}


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


def stage_events(
    con: duckdb.DuckDBPyConnection,
    files: InputFiles,
    identity: IdentityConfig,
    as_of: dt.date | None = None,
    max_reported_rows: int = 5,
) -> StagedEvents:
    """Validate and normalise raw events into the temp view ``clean_events``.

    Bad rows go to ``bad_events`` with a ``reason``; duplicates (same ``event_id``) are
    dropped keeping the first row in file order. Rows in = clean + bad + duplicates.
    """
    source = reader_sql(files.events, files.fmt, files.hive)
    columns = describe(con, source, files.display)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"{files.display}: missing required column `{missing[0]}` "
            f"(events need {', '.join(REQUIRED_COLUMNS)} and at least one identity column)"
        )
    id_columns = present_identity_columns(columns, identity)
    if not id_columns:
        accepted = [*identity.namespaces, *HASHED_IDENTITIES]
        raise UserError(
            f"{files.display}: no identity column; expected at least one of {', '.join(accepted)}"
        )

    ts = _timestamp_sql(columns["timestamp"], files.display)
    revenue, revenue_bad = _numeric_sql("revenue", columns.get("revenue"), files.display)
    quantity, quantity_bad = _numeric_sql("quantity", columns.get("quantity"), files.display)
    ids = identity_sql(columns, identity)
    xdm = " ".join(f"WHEN {sql_string(k.lower())} THEN {sql_string(v)}" for k, v in XDM_EVENT_TYPES.items())
    raw_type = _text("event_type")
    event_type = f"CASE lower({raw_type}) {xdm} ELSE {raw_type} END"
    strings = {
        c: (f"lower({_text(c)})" if c in ("channel", "product_category") else _text(c))
        if c in columns
        else "CAST(NULL AS VARCHAR)"
        for c in STRING_COLUMNS
    }
    row_number = "file_row_number + 1" if files.fmt == "parquet" else "row_number() OVER ()"
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
    as_of_check = f"ts >= TIMESTAMP {sql_string(str(as_of))} + INTERVAL 1 DAY" if as_of else "false"
    any_identity = " OR ".join(f"{sql_ident(n)} IS NOT NULL" for n in identity.namespaces)
    content = ", ".join(
        [
            "CAST(ts AS VARCHAR)",
            "event_type",
            *(f"coalesce({sql_ident(n)}, '')" for n in identity.namespaces),
            *(f"coalesce({c}, '')" for c in STRING_COLUMNS),
            "coalesce(CAST(revenue AS VARCHAR), '')",
            "coalesce(CAST(quantity AS VARCHAR), '')",
        ]
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE parsed_events AS
        WITH src AS (
            SELECT *, {row_number} AS _source_row FROM {source}
        ), typed AS (
            SELECT
                {ts} AS ts,
                {event_type} AS event_type,
                {", ".join(f"{expr} AS {sql_ident(n)}" for n, expr in ids.items())},
                {", ".join(f"{expr} AS {c}" for c, expr in strings.items())},
                {revenue} AS revenue, {revenue_bad} AS _revenue_bad,
                {quantity} AS quantity, {quantity_bad} AS _quantity_bad,
                {given_id} AS _given_id,
                {"".join(f"{sql_ident(c)}, " for c in extras)}
                filename AS _source_file, _source_row
            FROM src
        )
        SELECT
            coalesce(_given_id, 'e_' || md5(concat_ws('|', {content}))) AS event_id,
            * EXCLUDE (_given_id, _revenue_bad, _quantity_bad),
            CASE
                WHEN ts IS NULL THEN 'unparseable_timestamp'
                WHEN event_type IS NULL THEN 'missing_event_type'
                WHEN NOT ({any_identity}) THEN 'no_identity'
                WHEN _revenue_bad THEN 'invalid_revenue'
                WHEN event_type = 'purchase' AND revenue < 0 THEN 'negative_revenue'
                WHEN _quantity_bad THEN 'invalid_quantity'
                WHEN {as_of_check} THEN 'future_timestamp'
            END AS reason
        FROM typed
    """)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE bad_events AS SELECT * FROM parsed_events WHERE reason IS NOT NULL"
    )
    # Duplicates are rare: find them on event_id alone, then drop all but the first in file
    # order. A window over every row and column would hold the whole input in memory.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE duplicate_rows AS
        SELECT _source_file, _source_row FROM (
            SELECT _source_file, _source_row,
                   row_number() OVER (PARTITION BY event_id ORDER BY _source_file, _source_row) AS copy
            FROM parsed_events
            WHERE reason IS NULL AND event_id IN (
                SELECT event_id FROM parsed_events WHERE reason IS NULL GROUP BY event_id HAVING count(*) > 1)
        ) WHERE copy > 1
    """)
    # A view: the parsed rows are held once, however many steps read the clean events.
    con.execute("""
        CREATE OR REPLACE TEMP VIEW clean_events AS
        SELECT p.* EXCLUDE (reason) RENAME (ts AS timestamp) FROM parsed_events p
        ANTI JOIN duplicate_rows d ON d._source_file = p._source_file AND d._source_row = p._source_row
        WHERE p.reason IS NULL
    """)
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
        rows_clean=rows_clean,
        bad_by_reason={r: by_reason.get(r, 0) for r in BAD_ROW_REASONS if by_reason.get(r)},
        first_bad=first_bad,
        columns=list(columns),
    )


def bad_rows_message(display: str, staged: StagedEvents) -> str:
    """The one-line failure for ``--on-bad-rows fail``: counts by reason and first rows."""
    reasons = ", ".join(f"{k}: {v}" for k, v in staged.bad_by_reason.items())
    multi_file = len({row["file"] for row in staged.first_bad}) > 1
    rows = "; ".join(
        (f"{Path(r['file']).name} row {r['row']}" if multi_file else f"row {r['row']}") + f" ({r['reason']})"
        for r in staged.first_bad
    )
    return (
        f"{display}: {staged.rows_bad} bad rows ({reasons}); first: {rows}. "
        f"Fix them, or pass --on-bad-rows quarantine to set them aside."
    )


PROFILE_CONSENT_COLUMNS: tuple[str, ...] = ("consent_personalization", "consent_marketing")


def stage_profiles(con: duckdb.DuckDBPyConnection, path: Path, identity: IdentityConfig) -> list[str]:
    """Normalise the profile-attributes file into the temp table ``profile_attributes``.

    Identity columns are hashed like events; consent flags become 'y' / 'n' / NULL
    (missing means not given). Returns the identity namespaces the file carries.
    """
    files, fmt = _event_files(path)
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
    consent = {
        c: (
            f"CASE WHEN lower({_text(c)}) IN ('y', 'yes', 'true', '1') THEN 'y' "
            f"WHEN lower({_text(c)}) IN ('n', 'no', 'false', '0') THEN 'n' END"
        )
        if c in columns
        else "CAST(NULL AS VARCHAR)"
        for c in PROFILE_CONSENT_COLUMNS
    }
    skip = {*identity.namespaces, *HASHED_IDENTITIES, *PROFILE_CONSENT_COLUMNS, "filename", "file_row_number"}
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
    return namespaces
