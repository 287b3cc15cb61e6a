"""What an ingest summary reports of the stitched events beyond the staging counts, asked once.

The queries are written once, in DuckDB's SQL; the Spark engine runs them transpiled by sqlglot
over the same tables (``clean_events`` and ``identity_map``), so both engines report alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Breakdown:
    """The time range, events by type and by channel, identities by namespace."""

    first_event: str | None
    last_event: str | None
    events_by_type: dict[str, int]
    events_by_channel: dict[str, int]
    identities_by_namespace: dict[str, int]


def events_sql(events: str = "clean_events") -> str:
    """One scan of the events for the time range and both breakdowns."""
    return f"""
        SELECT grouping(event_type) AS all_types, grouping(channel) AS all_channels, event_type,
               coalesce(channel, '(none)') AS channel, count(*) AS n, min(timestamp), max(timestamp)
        FROM {events} GROUP BY GROUPING SETS ((event_type), (channel), ())
        ORDER BY n DESC, event_type, channel
    """


def identities_sql(identity_map: str = "identity_map") -> str:
    """Identities by namespace."""
    return f"SELECT namespace, count(*) FROM {identity_map} GROUP BY 1 ORDER BY 1"


def breakdown(event_rows: list, identity_rows: list) -> Breakdown:
    """The breakdown from the rows of :func:`events_sql` and :func:`identities_sql`."""
    first, last = next(((r[5], r[6]) for r in event_rows if (r[0], r[1]) == (1, 1)), (None, None))
    return Breakdown(
        first_event=str(first) if first else None,
        last_event=str(last) if last else None,
        events_by_type={r[2]: int(r[4]) for r in event_rows if (r[0], r[1]) == (0, 1)},
        events_by_channel={r[3]: int(r[4]) for r in event_rows if (r[0], r[1]) == (1, 0)},
        identities_by_namespace={r[0]: int(r[1]) for r in identity_rows},
    )
