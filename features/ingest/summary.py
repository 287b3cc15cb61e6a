"""What an ingest summary reports of the stitched events beyond the staging counts, asked once.

The queries are written once, in DuckDB's SQL; the Spark engine runs them transpiled by sqlglot
over the same tables (``clean_events`` and ``identity_map``), so both engines report alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ORDER_ID = "order_id"  # the optional contract column grouping purchase lines into orders
# Warn when at least this share of purchase rows (and this many) share a profile and a moment.
LINE_ITEM_SHARE = 0.2
LINE_ITEM_MIN_ROWS = 10


@dataclass(frozen=True)
class Breakdown:
    """The time range, events by type and by channel, identities by namespace."""

    first_event: str | None
    last_event: str | None
    events_by_type: dict[str, int]
    events_by_channel: dict[str, int]
    identities_by_namespace: dict[str, int]
    purchase_rows: int = 0
    orders: int | None = None  # distinct order_id of purchases; None without the column
    warnings: list[str] = field(default_factory=list)


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


def breakdown(event_rows: list, identity_rows: list, line_item_row: tuple | None = None) -> Breakdown:
    """The breakdown from the rows of :func:`events_sql`, :func:`identities_sql` and
    :func:`line_items_sql` (its one row, with whether the events have ``order_id``)."""
    first, last = next(((r[5], r[6]) for r in event_rows if (r[0], r[1]) == (1, 1)), (None, None))
    purchases, shared, orders = (
        (int(line_item_row[0]), int(line_item_row[1]), line_item_row[2]) if (line_item_row) else (0, 0, None)
    )
    warning = line_item_warning(purchases, shared, orders is not None)
    return Breakdown(
        first_event=str(first) if first else None,
        last_event=str(last) if last else None,
        events_by_type={r[2]: int(r[4]) for r in event_rows if (r[0], r[1]) == (0, 1)},
        events_by_channel={r[3]: int(r[4]) for r in event_rows if (r[0], r[1]) == (1, 0)},
        identities_by_namespace={r[0]: int(r[1]) for r in identity_rows},
        purchase_rows=purchases,
        orders=None if orders is None else int(orders),
        warnings=[warning] if warning else [],
    )


def line_items_sql(events: str, has_order_id: bool) -> str:
    """Purchase rows, those sharing their profile and timestamp with another purchase, and
    orders (distinct ``order_id``; NULL without the column)."""
    orders = (
        f"(SELECT count(DISTINCT {ORDER_ID}) FROM {events} WHERE event_type = 'purchase')"
        if has_order_id
        else "CAST(NULL AS BIGINT)"
    )
    return f"""
        WITH moments AS (
            SELECT profile_id, timestamp, count(*) AS n FROM {events}
            WHERE event_type = 'purchase' GROUP BY profile_id, timestamp
        )
        SELECT coalesce(sum(n), 0) AS purchases,
               coalesce(sum(CASE WHEN n > 1 THEN n ELSE 0 END), 0) AS shared, {orders} AS orders
        FROM moments
    """


def line_item_warning(purchases: int, shared: int, has_order_id: bool) -> str | None:
    """The warning for line items fed as orders, or None."""
    if has_order_id or shared < LINE_ITEM_MIN_ROWS or shared < LINE_ITEM_SHARE * purchases:
        return None
    return (
        f"{shared:,} of {purchases:,} purchase rows ({shared / purchases:.0%}) share their timestamp and "
        f"profile with another purchase: line items counted as orders? Give an `{ORDER_ID}` column so the "
        "lines of one order count as one order (purchase counts, order values)"
    )
