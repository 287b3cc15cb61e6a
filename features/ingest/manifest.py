"""The ingest directory's format, which either engine writes and reads.

``manifest.json`` records the format version; a directory written by an older version is
refused with one line, so no step reads tables whose shape it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from propensity.core.errors import UserError
from propensity.features.sql import sql_ident

OnBadRows = Literal["fail", "quarantine"]
# Bumped whenever the ingest output changes shape (2: events carry new_identities;
# 3: events and profiles carry profile_key; 4: the identity graph keeps when each identity
# and link was first seen, and events their anchor identity, for profiles as of a date;
# 5: events sorted by profile_key, then time, so that a range of profile keys is a run of
# row groups, which a profile partition reads alone through their min/max statistics).
INGEST_FORMAT = 5
# The identity graph's tables, written by ingest and read back as views of the same name.
GRAPH_TABLES = ("identity_map", "identity_links", "identity_unsettled")
# Every table an ingest directory holds (``profile_attributes`` too, when there were some).
INGEST_TABLES = ("events", "profiles", *GRAPH_TABLES)
SOURCE_COLUMNS = ("_source_file", "_source_row")  # where a row came from: not an event column


@dataclass(frozen=True)
class IngestFile:
    """One table an ingest directory holds, as both engines write it: its columns (None: all,
    less ``drop``) and the order of its rows (every key ascending, nulls first)."""

    name: str
    order: tuple[str, ...]
    columns: tuple[str, ...] | None = None
    drop: tuple[str, ...] = ()


def ingest_files(with_attributes: bool) -> list[IngestFile]:
    """The tables ``ingest`` writes, in order (``profile_attributes`` when there were some)."""
    files = [
        IngestFile("events", ("profile_key", "timestamp", "event_id"), drop=SOURCE_COLUMNS),
        IngestFile(
            "identity_map",
            ("profile_id", "namespace", "value"),
            ("namespace", "value", "profile_id", "profile_key", "node_key", "component", "first_seen"),
        ),
        IngestFile("identity_links", ("a", "b")),
        IngestFile("identity_unsettled", ("component", "after")),
        IngestFile("profile_attributes", ("_source_row",)),
        IngestFile("profiles", ("profile_id",)),
    ]
    return [f for f in files if with_attributes or f.name != "profile_attributes"]


def checked_manifest(text: str, directory: Any) -> dict[str, Any]:
    """An ingest directory's manifest, refused when an older format wrote it."""
    manifest = json.loads(text)
    if manifest.get("format") != INGEST_FORMAT:
        raise UserError(
            f"{directory}: written by an older propensity (ingest format "
            f"{manifest.get('format', 1)}, need {INGEST_FORMAT}); run `propensity ingest` again"
        )
    return manifest


def ingested_views(with_attributes: bool) -> tuple[str, ...]:
    """The tables an ingest directory is read back as, views of the same name: every one
    written (``profile_attributes`` when ``with_attributes``: it was written)."""
    return (*INGEST_TABLES, "profile_attributes") if with_attributes else INGEST_TABLES


def ingested_view_sql(view: str, source: str, columns: list[str]) -> str:
    """The query (either engine's SQL) of the view ``view`` over ``source``, the relation reading
    its Parquet (``columns``: the file's columns). Events written before orders were grouped
    (no ``order_lines``): every purchase row is one order, as it was."""
    if view != "events" or "order_lines" in columns:
        return f"SELECT * FROM {source}"
    return (
        f"SELECT *, CAST(NULL AS INTEGER) AS order_lines, CAST(NULL AS DOUBLE) AS order_revenue FROM {source}"
    )


def ingest_table_sql(table: IngestFile, view: str, columns: list[str]) -> str:
    """The query (DuckDB's SQL) of one ingest table's rows over ``view`` (its ``columns``): the
    file's columns in order, every key ascending with nulls first."""
    chosen = table.columns or [c for c in columns if c not in table.drop]
    order = ", ".join(f"{sql_ident(key)} NULLS FIRST" for key in table.order)
    return f"SELECT {', '.join(sql_ident(c) for c in chosen)} FROM {view} ORDER BY {order}"


def quarantine_sql(view: str, columns: list[str]) -> str:
    """The query (DuckDB's SQL) of the quarantined rows over ``view`` (its ``columns``): the
    reason and where each row came from first, in the order of the files."""
    others = ", ".join(sql_ident(c) for c in columns if c not in ("reason", *SOURCE_COLUMNS))
    return (
        "SELECT reason, _source_file AS source_file, _source_row AS source_row, "
        f"{others} FROM {view} ORDER BY source_file, source_row"
    )
