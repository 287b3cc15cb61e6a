"""Small questions asked of the events: where the data ends, which categories matter."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from propensity.core.errors import UserError


def learn_categories(con: duckdb.DuckDBPyConnection, before: dt.date, limit: int) -> list[str]:
    """The most viewed and bought categories before ``before`` (the training snapshot only)."""
    rows = con.execute(f"""
        SELECT product_category FROM events
        WHERE timestamp < TIMESTAMP '{before} 00:00:00' AND product_category IS NOT NULL
          AND event_type IN ('product_view', 'purchase', 'add_to_cart')
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(limit)}
    """).fetchall()
    return [r[0] for r in rows]


def data_end(con: duckdb.DuckDBPyConnection) -> dt.date:
    """The day after the last event: the default cutoff (every earlier day is complete)."""
    last = con.execute("SELECT max(timestamp) FROM events").fetchone()[0]
    if last is None:
        raise UserError("no events to build features from")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)
