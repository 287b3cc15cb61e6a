"""The validate and ingest jobs, and loading events (raw or ingested) for every later job.

Plain functions from files to files: each opens a DuckDB connection, calls the logic in
``propensity.features`` and writes its outputs atomically. The CLI is a thin layer over
these functions, so notebooks and scheduled jobs can call them directly.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from propensity.core.config import IdentityConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, check_output, write_json
from propensity.features.connection import connect
from propensity.features.identity import stitching as identity_mod
from propensity.features.identity.as_of import AsOfSources, IdentityGraph
from propensity.features.ingest.inputs import InputFiles, resolve_input
from propensity.features.ingest.staging import bad_rows_message, stage_events, stage_profiles
from propensity.features.sql import sql_string

OnBadRows = Literal["fail", "quarantine"]
# Bumped whenever the ingest output changes shape (2: events carry new_identities;
# 3: events and profiles carry profile_key; 4: the identity graph keeps when each identity
# and link was first seen, and events their anchor identity, for profiles as of a date).
INGEST_FORMAT = 4
# The identity graph's tables, written by ingest and read back as views of the same name.
GRAPH_TABLES = ("identity_map", "identity_links", "identity_unsettled")


@dataclass
class LoadedEvents:
    """A DuckDB connection holding ``events`` (with profile_id), ``profiles`` and the identity
    graph's views, with ``graph`` to see them as of a date."""

    con: duckdb.DuckDBPyConnection
    inputs: InputFiles
    manifest: dict[str, Any] | None = None  # an ingest directory's manifest.json
    graph: IdentityGraph | None = None

    def sources(self, as_of: dt.date) -> AsOfSources:
        """The events and profiles as of ``as_of``: what every snapshot at that date reads."""
        if self.graph is None:
            return AsOfSources(as_of, "events", "profiles", "identity_map")
        return self.graph.sources(as_of)


@dataclass(frozen=True)
class IngestSummary:
    """What validate and ingest saw: rows in = written + duplicates + bad."""

    rows_in: int
    rows_written: int
    duplicates_dropped: int
    rows_quarantined: int
    bad_rows: int
    bad_rows_by_reason: dict[str, int]
    first_event: str | None
    last_event: str | None
    events_by_type: dict[str, int]
    events_by_channel: dict[str, int]
    identities_by_namespace: dict[str, int]
    profiles: int | None = None
    known_profiles: int | None = None
    identity_collapses: list[dict[str, Any]] = field(default_factory=list)
    # Profiles whose identities were, at some earlier date, not yet that one profile.
    unsettled_profiles: int | None = None
    # Of duplicates_dropped: same event_id, another payload (counted apart from re-deliveries).
    conflicting_duplicates: int = 0


def _summarise(con: duckdb.DuckDBPyConnection, staged, stitched, quarantined: bool) -> IngestSummary:
    # One scan of the events for the time range and both breakdowns.
    rows = con.execute("""
        SELECT grouping(event_type) AS all_types, grouping(channel) AS all_channels, event_type,
               coalesce(channel, '(none)') AS channel, count(*) AS n, min(timestamp), max(timestamp)
        FROM clean_events GROUP BY GROUPING SETS ((event_type), (channel), ())
        ORDER BY n DESC, event_type, channel
    """).fetchall()
    by_type = {r[2]: r[4] for r in rows if (r[0], r[1]) == (0, 1)}
    by_channel = {r[3]: r[4] for r in rows if (r[0], r[1]) == (1, 0)}
    first, last = next(((r[5], r[6]) for r in rows if (r[0], r[1]) == (1, 1)), (None, None))
    identities = (
        dict(con.execute("SELECT namespace, count(*) FROM identity_map GROUP BY 1 ORDER BY 1").fetchall())
        if stitched
        else {}
    )
    return IngestSummary(
        rows_in=staged.rows_in,
        rows_written=staged.rows_clean,
        duplicates_dropped=staged.rows_duplicate,
        conflicting_duplicates=staged.rows_conflicting,
        rows_quarantined=staged.rows_bad if quarantined else 0,
        bad_rows=staged.rows_bad,
        bad_rows_by_reason=staged.bad_by_reason,
        first_event=str(first) if first else None,
        last_event=str(last) if last else None,
        events_by_type=by_type,
        events_by_channel=by_channel,
        identities_by_namespace=identities,
        profiles=stitched.profiles if stitched is not None else None,
        known_profiles=stitched.known_profiles if stitched is not None else None,
        identity_collapses=[asdict(c) for c in stitched.collapses] if stitched is not None else [],
        unsettled_profiles=stitched.unsettled_profiles if stitched is not None else None,
    )


def _stage(
    con: duckdb.DuckDBPyConnection,
    inputs: InputFiles,
    config: ProjectConfig,
    on_bad_rows: OnBadRows,
    as_of: dt.date | None,
    profiles: Path | None,
    consent_rows: OnBadRows | None = None,
) -> IngestSummary:
    """Stage events (and profile attributes: unrecognised consent values per ``consent_rows``,
    by default ``on_bad_rows``) and stitch them."""
    staged = stage_events(
        con,
        inputs,
        config.identity,
        as_of,
        config.ingest.max_reported_rows,
        config.ingest.future_tolerance_hours,
    )
    if staged.rows_bad and on_bad_rows == "fail":
        raise UserError(bad_rows_message(inputs.display, staged))
    with_profiles = profiles is not None
    if with_profiles:
        stage_profiles(con, profiles, config.identity, consent_rows or on_bad_rows)
    stitched = identity_mod.stitch(con, config.identity, with_profiles)
    identity_mod.attribute_events(con, config.identity)
    if with_profiles:
        identity_mod.anchor_attributes(con, config.identity)
    identity_mod.build_profiles(con, config.identity, with_profiles)
    return _summarise(con, staged, stitched, on_bad_rows == "quarantine")


def validate(
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    profiles: str | Path | None = None,
) -> IngestSummary:
    """Dry run of ingest: the summary, including bad rows by reason; writes nothing."""
    inputs = resolve_input(events)
    # Closed on the way out: the staged events would otherwise hold memory until collected.
    with connect(config.engine) as con:
        profiles_path = Path(profiles) if profiles else inputs.profiles
        # Bad events are counted, not fatal; a consent value outside the vocabulary is refused
        # unless the project quarantines bad rows.
        return _stage(con, inputs, config, "quarantine", as_of, profiles_path, config.ingest.on_bad_rows)


def ingest(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    profiles: str | Path | None = None,
    on_bad_rows: OnBadRows | None = None,
    as_of: dt.date | None = None,
) -> IngestSummary:
    """Validate, hash, de-duplicate and stitch events; write them with the identity map.

    ``out`` receives ``events.parquet``, ``identity_map.parquet``, ``profiles.parquet``,
    ``manifest.json``, the identity graph's ``identity_links.parquet`` and
    ``identity_unsettled.parquet`` (see :func:`features.identity.stitch`), the staged
    ``profile_attributes.parquet`` when there are profile attributes and, with
    ``on_bad_rows="quarantine"``, ``quarantine.parquet``. The directory appears whole or not
    at all.
    """
    inputs = resolve_input(events)
    if inputs.ingested is not None:
        raise UserError(f"{events}: already an ingest output directory")
    on_bad_rows = on_bad_rows or config.ingest.on_bad_rows
    check_output(out, "ingest")
    with connect(config.engine) as con:
        profiles_path = Path(profiles) if profiles else inputs.profiles
        summary = _stage(con, inputs, config, on_bad_rows, as_of, profiles_path)
        with atomic_path(out, kind="ingest") as tmp:
            tmp.mkdir(parents=True)
            _copy(
                con,
                "SELECT * EXCLUDE (_source_file, _source_row) FROM stitched_events "
                "ORDER BY timestamp, event_id",
                tmp / "events.parquet",
            )
            _copy(
                con,
                "SELECT namespace, value, profile_id, profile_key, node_key, component, first_seen "
                "FROM identity_map ORDER BY profile_id, namespace, value",
                tmp / "identity_map.parquet",
            )
            _copy(con, "SELECT * FROM identity_links ORDER BY a, b", tmp / "identity_links.parquet")
            _copy(con, "SELECT * FROM identity_unsettled", tmp / "identity_unsettled.parquet")
            if profiles_path:
                _copy(
                    con,
                    "SELECT * FROM profile_attributes ORDER BY _source_row",
                    tmp / "profile_attributes.parquet",
                )
            _copy(con, "SELECT * FROM profiles ORDER BY profile_id", tmp / "profiles.parquet")
            if on_bad_rows == "quarantine" and summary.bad_rows:
                _copy(
                    con,
                    "SELECT reason, _source_file AS source_file, _source_row AS source_row, "
                    "* EXCLUDE (reason, _source_file, _source_row) FROM bad_events "
                    "ORDER BY source_file, source_row",
                    tmp / "quarantine.parquet",
                )
            manifest = {
                "format": INGEST_FORMAT,
                "source": inputs.display,
                "profiles_source": str(profiles_path) if profiles_path else None,
                "ground_truth": str(inputs.ground_truth.resolve()) if inputs.ground_truth else None,
                "as_of": str(as_of) if as_of else None,
                "on_bad_rows": on_bad_rows,
                # The rules the graph was stitched with: the graph as of a date must use the same.
                "identity": config.identity.model_dump(),
                **asdict(summary),
            }
            write_json(manifest, tmp / "manifest.json")
    return summary


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO {sql_string(str(path))} (FORMAT parquet, COMPRESSION zstd)")


def load_events(
    events: str | Path, config: ProjectConfig, on_bad_rows: OnBadRows | None = None
) -> LoadedEvents:
    """Raw events or an ingest directory -> a connection with ``events``, ``profiles`` and the
    identity graph (``identity_map``, ``identity_links``, ``identity_unsettled``, and
    ``profile_attributes`` when there are some), and the graph to see them as of a date.

    Raw events are validated and stitched in memory exactly as ``ingest`` would.
    """
    inputs = resolve_input(events)
    con = connect(config.engine)
    if inputs.ingested is not None:
        directory = inputs.ingested
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("format") != INGEST_FORMAT:
            raise UserError(
                f"{directory}: written by an older propensity (ingest format "
                f"{manifest.get('format', 1)}, need {INGEST_FORMAT}); run `propensity ingest` again"
            )
        for view in ("events", "profiles", *GRAPH_TABLES, "profile_attributes"):
            path = directory / f"{view}.parquet"
            if view == "profile_attributes" and not path.exists():
                continue
            # The Spark ingest writes each table as a directory of parts.
            source = sql_string(str(path / "*.parquet" if path.is_dir() else path))
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({source})")
        graph = IdentityGraph(con, IdentityConfig.model_validate(manifest["identity"]))
        gt = manifest.get("ground_truth")
        if gt and Path(gt).is_dir():
            inputs = InputFiles(
                events=inputs.events,
                fmt=inputs.fmt,
                ingested=directory,
                ground_truth=Path(gt),
                display=inputs.display,
            )
        return LoadedEvents(con=con, inputs=inputs, manifest=manifest, graph=graph)
    _stage(con, inputs, config, on_bad_rows or config.ingest.on_bad_rows, None, inputs.profiles)
    con.execute("CREATE VIEW events AS SELECT * EXCLUDE (_source_file, _source_row) FROM stitched_events")
    return LoadedEvents(con=con, inputs=inputs, graph=IdentityGraph(con, config.identity))
