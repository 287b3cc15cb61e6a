"""Orders: purchase rows that share an ``order_id`` are the lines of one order.

Ingest gives every event two columns (NULL unless it is a purchase line with an
``order_id``): ``order_lines``, the order's line count on its first line (earliest timestamp,
then smallest event_id) and 0 on its other lines, and ``order_revenue``, the order's revenue
(the lines' sum, exact to the cent) on its first line. The feature registry counts a purchase
where ``order_lines`` is NULL or positive, so purchase counts, order values and recency use
orders while revenue and quantities still add up every line; data without ``order_id`` keeps
one row = one order.

Line items fed without ``order_id`` count every item as an order: the ingest summary warns
(:func:`propensity.features.ingest.summary.line_item_warning`). Spark's attribution builds the
same columns (``features.spark.identity``).
"""

from __future__ import annotations

ORDER_ID = "order_id"
ORDER_COLUMNS: tuple[str, ...] = ("order_lines", "order_revenue")


def order_firsts_sql(events: str = "clean_events") -> str:
    """Per order: its first line's event_id, its line count and its revenue."""
    return f"""
        SELECT arg_min(event_id, (timestamp, event_id)) AS event_id, count(*)::INTEGER AS order_lines,
               CAST(sum(CAST(revenue AS DECIMAL(18, 2))) AS DOUBLE) AS order_revenue
        FROM {events} WHERE event_type = 'purchase' AND {ORDER_ID} IS NOT NULL
        GROUP BY {ORDER_ID}
    """


def order_columns_sql(has_order_id: bool, event: str = "e", first: str = "o") -> str:
    """The SELECT items of the order columns for events ``event`` left-joined to the order
    firsts ``first`` on event_id (NULLs when the events have no ``order_id``)."""
    if not has_order_id:
        return "CAST(NULL AS INTEGER) AS order_lines, CAST(NULL AS DOUBLE) AS order_revenue"
    line = f"{event}.event_type = 'purchase' AND {event}.{ORDER_ID} IS NOT NULL"
    return (
        f"CASE WHEN {line} THEN coalesce({first}.order_lines, 0) END AS order_lines, "
        f"{first}.order_revenue AS order_revenue"
    )
