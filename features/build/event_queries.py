"""Small questions asked of the events: where the data ends, which categories matter.

Each is written once, in DuckDB's SQL: it runs on DuckDB as it is and on Spark transpiled by
sqlglot (:func:`propensity.features.spark.features.duckdb_to_spark`), so the engines cannot
drift.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from propensity.core.errors import UserError
from propensity.features.contract import CANONICAL_EVENT_TYPES
from propensity.features.sql import sql_ident, sql_string


def learn_categories_sql(before: dt.date, limit: int, events: str = "events") -> str:
    """The most viewed and bought categories before ``before`` (the training snapshot only)."""
    return f"""
        SELECT product_category FROM {events}
        WHERE timestamp < TIMESTAMP '{before} 00:00:00' AND product_category IS NOT NULL
          AND event_type IN ('product_view', 'purchase', 'add_to_cart')
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(limit)}
    """


def learn_event_types_sql(before: dt.date, limit: int, events: str = "events") -> str:
    """The most frequent event types outside the contract's vocabulary before ``before`` (ties
    by name, so both engines learn the same list)."""
    canonical = ", ".join(sql_string(t) for t in CANONICAL_EVENT_TYPES)
    return f"""
        SELECT event_type FROM {events}
        WHERE timestamp < TIMESTAMP '{before} 00:00:00' AND event_type NOT IN ({canonical})
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(limit)}
    """


def data_end_sql(events: str = "events") -> str:
    """The last event's timestamp (see :func:`day_after`)."""
    return f"SELECT max(timestamp) FROM {events}"


def namespaces_sql(identity_map: str = "identity_map") -> str:
    """The identity namespaces present."""
    return f"SELECT DISTINCT namespace FROM {identity_map} ORDER BY 1"


def representatives_sql(identity_map: str, namespaces: list[str]) -> str:
    """One representative identity per namespace and profile (the smallest value): the score
    table's identity columns."""
    selects = "".join(
        f", min(value) FILTER (WHERE namespace = {sql_string(n)}) AS {sql_ident(n)}" for n in namespaces
    )
    return f"SELECT profile_id{selects} FROM {identity_map} GROUP BY profile_id"


def day_after(last) -> dt.date:
    """The day after the last event: the default cutoff (every earlier day is complete)."""
    if last is None:
        raise UserError("no events to build features from")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)


def learn_categories(con: duckdb.DuckDBPyConnection, before: dt.date, limit: int) -> list[str]:
    """The most viewed and bought categories before ``before`` (the training snapshot only)."""
    return [r[0] for r in con.execute(learn_categories_sql(before, limit)).fetchall()]


def data_end(con: duckdb.DuckDBPyConnection) -> dt.date:
    """The day after the last event: the default cutoff (every earlier day is complete)."""
    return day_after(con.execute(data_end_sql()).fetchone()[0])


def _types_sql(event_types: list[str]) -> str:
    return ", ".join(sql_string(t) for t in event_types)


def history_start_sql(event_types: list[str], events: str = "events") -> str:
    """The first event of ``event_types`` (the history a snapshot plan measures)."""
    return f"SELECT min(timestamp) FROM {events} WHERE event_type IN ({_types_sql(event_types)})"


def profiles_seen_sql(dates: list[dt.date], event_types: list[str], events: str = "events") -> str:
    """One row: per date, the profiles with an event of ``event_types`` before it (one scan;
    plain CASE sums, which Spark's dialect reads too)."""
    counts = ", ".join(
        f"sum(CASE WHEN first_seen < TIMESTAMP '{d} 00:00:00' THEN 1 ELSE 0 END)" for d in dates
    )
    return (
        f"SELECT {counts} FROM (SELECT profile_id, min(timestamp) AS first_seen FROM {events} "
        f"WHERE event_type IN ({_types_sql(event_types)}) GROUP BY profile_id) AS seen"
    )
