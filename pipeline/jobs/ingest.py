"""The validate and ingest jobs, on the config's engine (DuckDB or Spark).

Plain functions from files to files: each asks :func:`~propensity.pipeline.jobs.events.engine_for`
for the engine, stages and stitches the events and writes its outputs atomically. The CLI is a
thin layer over these functions, so notebooks and scheduled jobs can call them directly.
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import check_output
from propensity.features.engine import Engine, Stitched
from propensity.features.ingest.inputs import is_remote
from propensity.features.ingest.manifest import INGEST_FORMAT, OnBadRows
from propensity.pipeline.jobs.events import engine_for

__all__ = ["INGEST_FORMAT", "IngestSummary", "ingest", "validate"]


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
    purchase_rows: int = 0
    orders: int | None = None  # distinct order_id of purchases; None without the column
    warnings: list[str] = field(default_factory=list)  # e.g. line items fed as orders


def _summarise(engine: Engine, stitched: Stitched, quarantined: bool) -> IngestSummary:
    counts, result = stitched.counts, stitched.result
    return IngestSummary(
        rows_in=counts.rows_in,
        rows_written=counts.rows_clean,
        duplicates_dropped=counts.rows_duplicate,
        conflicting_duplicates=counts.rows_conflicting,
        rows_quarantined=counts.rows_bad if quarantined else 0,
        bad_rows=counts.rows_bad,
        bad_rows_by_reason=counts.bad_by_reason,
        **asdict(engine.breakdown(stitched)),
        profiles=result.profiles,
        known_profiles=result.known_profiles,
        identity_collapses=[asdict(c) for c in result.collapses],
        unsettled_profiles=result.unsettled_profiles,
    )


def validate(
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    profiles: str | Path | None = None,
) -> IngestSummary:
    """Dry run of ingest: the summary, including bad rows by reason; writes nothing."""
    engine = engine_for(config)
    inputs = engine.resolve_input(events)
    profiles_path = profiles or inputs.profiles
    # Closed on the way out: the staged events would otherwise hold memory until collected. Bad
    # events are counted, not fatal; a consent value outside the vocabulary is refused unless the
    # project quarantines bad rows.
    stage = engine.stage(inputs, profiles_path, "quarantine", as_of, config.ingest.on_bad_rows)
    with closing(stage) as stitched:
        return _summarise(engine, stitched, True)


def _ground_truth(path: str | Path | None) -> str | None:
    if path is None or is_remote(path):
        return None if path is None else str(path)
    return str(Path(path).resolve())


def ingest_manifest(
    inputs: Any,
    profiles: str | Path | None,
    as_of: dt.date | None,
    on_bad_rows: OnBadRows,
    config: ProjectConfig,
    summary: IngestSummary,
) -> dict[str, Any]:
    """``manifest.json`` of an ingest directory (either engine's): format, sources, rules, counts."""
    return {
        "format": INGEST_FORMAT,
        "source": inputs.display,
        "profiles_source": str(profiles) if profiles else None,
        "ground_truth": _ground_truth(inputs.ground_truth),
        "as_of": str(as_of) if as_of else None,
        "on_bad_rows": on_bad_rows,
        # The rules the graph was stitched with: the graph as of a date must use the same.
        "identity": config.identity.model_dump(),
        **asdict(summary),
    }


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
    ``on_bad_rows="quarantine"``, ``quarantine.parquet``: one file each on DuckDB, a directory
    of parts each on Spark (any Hadoop path). The directory appears whole or not at all.
    """
    engine = engine_for(config)
    inputs = engine.resolve_input(events)
    if inputs.ingested is not None:
        raise UserError(f"{events}: already an ingest output directory")
    on_bad_rows = on_bad_rows or config.ingest.on_bad_rows
    profiles_path = profiles or inputs.profiles
    check_output(out, "ingest")  # a foreign folder is refused before the work, not only at the swap
    with closing(engine.stage(inputs, profiles_path, on_bad_rows, as_of)) as stitched:
        summary = _summarise(engine, stitched, on_bad_rows == "quarantine")
        manifest = ingest_manifest(inputs, profiles_path, as_of, on_bad_rows, config, summary)
        with engine.atomic_directory(out, kind="ingest") as tmp:
            engine.write_ingest(
                stitched, tmp, quarantine=on_bad_rows == "quarantine" and summary.bad_rows > 0
            )
            # Sorted keys, so re-runs give identical bytes.
            text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
            engine.write_text(text, f"{tmp}/manifest.json")
    return summary
