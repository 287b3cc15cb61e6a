"""Compile the feature registry to SQL: point-in-time feature tables for DuckDB and Spark.

Time is in whole days (``day`` = days since 1970-01-01, UTC). A snapshot at ``as_of`` uses
only events with ``timestamp < as_of`` (midnight UTC), i.e. ``day < as_of_day``; a window of
``w`` days is ``[as_of_day - w, as_of_day)``.

Several ways to the same values:

* :func:`snapshot_sql` / :func:`build_snapshot`: one as-of date straight off the events in
  one scan (what a scoring job does), with one of two plans picked by :func:`choose_plan`:
  ``windows`` (a conditional aggregate per window) or ``buckets`` (sums per window bucket,
  then windows from buckets);
* :func:`snapshots_sql`: many stacked as-of dates as portable SQL (a daily rollup joined to
  the snapshot dates), for engines without the compiled pass of
  :mod:`propensity.features.build.stacked_build`, which computes the same table faster. The tests
  hold them all equal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

import duckdb
import pandas as pd

from propensity.features.build.feature_set import Aggregate, Feature, FeatureSet
from propensity.features.build.registry import CARRIED_COLUMNS
from propensity.features.build.traits import trait_columns
from propensity.features.connection import relation_columns
from propensity.features.sql import DUCKDB, Dialect

EPOCH = dt.date(1970, 1, 1)
# The columns of the ``profiles`` relation the compiled SQL joins (profile attributes are joined
# only when present). The caller names them (on DuckDB:
# :func:`propensity.features.connection.relation_columns`, on Spark the frame's columns): the
# compiler never describes a relation itself, so it runs no query on any engine. None: none.
ProfileColumns = Collection[str] | None


def day_number(date: dt.date) -> int:
    """Days since 1970-01-01."""
    return (date - EPOCH).days


def bucket_edges(fs: FeatureSet) -> list[int]:
    """Window boundaries in days ago; consecutive edges bound the buckets (e_i, e_i+1]."""
    edges = {0, fs.lookback_days}
    for a in fs.aggregates.values():
        edges.add(fs.lookback_days if a.start is None else a.start)
        edges.add(a.end)
    return sorted(edges)


def _bucket_case(edges: list[int]) -> str:
    whens = " ".join(f"WHEN ago <= {edge} THEN {i}" for i, edge in enumerate(edges[1:]))
    return f"CASE {whens} END"


# (measure, fn) -> bucket-level column: what stage 2 needs from each bucket.
def _partials(fs: FeatureSet) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for a in fs.aggregates.values():
        out[(a.measure, a.fn)] = f"b_{a.fn}_{a.measure}"
    return out


def _partial_sql(measure: str, fn: str, daily_rows: bool) -> str:
    """A bucket-level partial over raw event rows, or over daily rollup rows (one per day)."""
    m = f"m_{measure}"
    return {
        "sum": f"sum({m})",
        "max": f"max({m})",
        "last_day": f"max(CASE WHEN {m} > 0 THEN day END)",
        "first_day": f"min(CASE WHEN {m} > 0 THEN day END)",
        # Buckets are disjoint, so distinct days per bucket add up to distinct days per window.
        "active_days": (
            f"sum(CASE WHEN {m} > 0 THEN 1 ELSE 0 END)"
            if daily_rows
            else f"count(DISTINCT CASE WHEN {m} > 0 THEN day END)"
        ),
    }[fn]


def _combine_sql(a: Aggregate, column: str, edges: list[int], lookback: int) -> str:
    start = lookback if a.start is None else a.start
    first, last = edges.index(a.end), edges.index(start) - 1
    window = f"bucket BETWEEN {first} AND {last}"
    if a.fn in ("sum", "active_days"):
        return f"coalesce(sum(CASE WHEN {window} THEN {column} END), 0)"
    if a.fn in ("max", "last_day"):
        return f"max(CASE WHEN {window} THEN {column} END)"
    return f"min(CASE WHEN {window} THEN {column} END)"


def measure_columns(fs: FeatureSet) -> str:
    """The SELECT list of every measure, one column each, for rows of events."""
    return ", ".join(f"{m.sql} AS m_{m.name}" for m in fs.measures.values())


def rollup_sql(fs: FeatureSet, dialect: Dialect = DUCKDB, events: str = "events") -> str:
    """One row per profile and active day with every measure summed (or maxed) for the day."""
    columns = ", ".join(
        f"CAST({m.rollup}({m.sql}) AS {m.sql_type}) AS m_{m.name}" for m in fs.measures.values()
    )
    day = dialect.day("timestamp")
    return f"""
        SELECT profile_id, {day} AS day, {columns}
        FROM {events}
        GROUP BY profile_id, {day}
    """


def _aggregates(fs: FeatureSet, rows_sql: str, daily_rows: bool) -> str:
    """Rows with profile_id, as_of_day, day, ago and m_* columns -> one row of aggregates each.

    Stage 1 sums every measure per (profile, as_of, bucket), where buckets lie between
    consecutive window edges; stage 2 adds up the few buckets that make each window.
    """
    edges = bucket_edges(fs)
    partials = _partials(fs)
    partial_select = ", ".join(
        f"{_partial_sql(m, fn, daily_rows)} AS {col}" for (m, fn), col in partials.items()
    )
    combine = ",\n           ".join(
        f"{_combine_sql(a, partials[(a.measure, a.fn)], edges, fs.lookback_days)} AS {a.name}"
        for a in fs.aggregates.values()
    )
    return f"""
        SELECT profile_id, as_of_day, {combine}
        FROM (
            SELECT profile_id, as_of_day, {_bucket_case(edges)} AS bucket, {partial_select}
            FROM ({rows_sql})
            GROUP BY profile_id, as_of_day, bucket
        )
        GROUP BY profile_id, as_of_day
    """


def _feature_select(features: list[Feature], dialect: Dialect) -> str:
    return ",\n       ".join(f"{f.sql} AS {dialect.ident(f.name)}" for f in features)


def _profile_join(
    columns: ProfileColumns, dialect: Dialect, key: str, profiles: str = "profiles", traits: tuple = ()
) -> tuple[str, str]:
    """Columns and join for profile attributes (tier, tenure, consent, declared traits), point in
    time (traits: :mod:`propensity.features.build.traits`).

    The attributes file is today's view, so a tier or tenure is only used for as-of dates
    after the profile signed up; consent is carried for segments, never modelled.
    ``profiles`` is the relation of attributes per profile (the profiles as of a date:
    ``features.identity.as_of.AsOfSources.profiles``).
    """
    available = set(columns or ())
    as_of_date = dialect.date("f.as_of_day")
    signed_up = f"p.signup_date IS NOT NULL AND CAST(p.signup_date AS DATE) < {as_of_date}"
    columns = []
    if "loyalty_tier" in available:
        tier = (
            f"CASE WHEN {signed_up} THEN p.loyalty_tier END"
            if "signup_date" in available
            else "p.loyalty_tier"
        )
        columns.append(f"CAST({tier} AS {dialect.string_type}) AS loyalty_tier")
    else:
        columns.append(f"CAST(NULL AS {dialect.string_type}) AS loyalty_tier")
    if "signup_date" in available:
        columns.append(
            f"CASE WHEN {signed_up} THEN f.as_of_day - {dialect.day('p.signup_date')} END AS tenure_days"
        )
    else:
        columns.append("CAST(NULL AS INTEGER) AS tenure_days")
    for c in CARRIED_COLUMNS:
        columns.append(f"CAST({'p.' + c if c in available else 'NULL'} AS {dialect.string_type}) AS {c}")
    columns += trait_columns(traits, available, dialect)
    join = f"LEFT JOIN {profiles} p ON p.{key} = f.{key}" if available else ""
    return ", ".join(columns), join


def features_sql_from(
    fs: FeatureSet,
    aggregates_sql: str,
    columns: ProfileColumns,
    dialect: Dialect,
    where: str | None = None,
    ordered: bool = True,
    join_key: str = "profile_id",
    profiles: str = "profiles",
) -> str:
    """Feature expressions over aggregates, with profile attributes from ``profiles`` joined on
    ``join_key`` (``profile_key`` when the aggregates carry it: an integer join is the cheaper one)."""
    profile_columns, profile_join = _profile_join(columns, dialect, join_key, profiles, fs.traits)
    key = ", profile_key" if join_key == "profile_key" else ""
    feature_columns = ", ".join(f"f.{dialect.ident(f.name)}" for f in fs.features)
    # A population rule reads feature columns, which all live in ``f``.
    condition = f"WHERE {where}" if where else ""
    return f"""
        WITH agg AS ({aggregates_sql}),
        f AS (
            SELECT profile_id, as_of_day{key},
                   {_feature_select(fs.features, dialect)}
            FROM agg
        )
        SELECT f.profile_id, {dialect.date("f.as_of_day")} AS as_of, {feature_columns},
               {profile_columns}
        FROM f {profile_join}
        {condition}
        {"ORDER BY f.as_of_day, f.profile_id" if ordered else ""}
    """


def _window_aggregates(fs: FeatureSet, rows_sql: str, as_of_day: int) -> str:
    """Rows with profile_id, day, ago and m_* columns -> aggregates in one group-by.

    Each aggregate is one conditional aggregate over the rows of its window: the shape of a
    hand-written query, best when there are few aggregates per measure.
    """
    selects = []
    for a in fs.aggregates.values():
        start = fs.lookback_days if a.start is None else a.start
        m = f"m_{a.measure}"
        # Rows outside the lookback never reach this query: the whole lookback needs no test.
        conditions = ([f"ago <= {start}"] if start < fs.lookback_days else []) + (
            [f"ago > {a.end}"] if a.end else []
        )
        in_window = " AND ".join(conditions) or "TRUE"
        active = " AND ".join([*conditions, f"{m} > 0"])
        expression = {
            "sum": f"coalesce(sum(CASE WHEN {in_window} THEN {m} ELSE 0 END), 0)",
            "max": f"max(CASE WHEN {in_window} THEN {m} END)",
            "last_day": f"max(CASE WHEN {active} THEN day END)",
            "first_day": f"min(CASE WHEN {active} THEN day END)",
            "active_days": f"count(DISTINCT CASE WHEN {active} THEN day END)",
        }[a.fn]
        selects.append(f"{expression} AS {a.name}")
    return f"""
        SELECT profile_id, {as_of_day} AS as_of_day, {", ".join(selects)}
        FROM ({rows_sql})
        GROUP BY profile_id
    """


# Per-event cost of the two plans, in conditional aggregates: a window plan evaluates every
# aggregate on every event row; a bucket plan evaluates each (measure, function) partial per
# event row, then every aggregate again per bucket row (about 0.45 of the cost, measured at
# 1M profiles / 24M events, where 35 core features favour windows 7.2 s to 8.3 s and all
# 192 favour buckets 29 s to 35 s).
BUCKET_REREAD_COST = 0.45


def choose_plan(fs: FeatureSet) -> str:
    """``windows`` (one group-by) or ``buckets`` (two), whichever the cost model finds cheaper."""
    windows = len(fs.aggregates)
    buckets = len(_partials(fs)) + BUCKET_REREAD_COST * len(fs.aggregates)
    return "windows" if windows <= buckets else "buckets"


def snapshot_sql(
    fs: FeatureSet,
    as_of: dt.date,
    columns: ProfileColumns = None,
    dialect: Dialect = DUCKDB,
    events: str = "events",
    where: str | None = None,
    plan: str = "auto",
    profiles: str = "profiles",
    ordered: bool = True,
) -> str:
    """One snapshot straight off the events: one scan, then aggregates per profile.

    ``plan``: ``windows`` (each aggregate over its window, one group-by), ``buckets`` (sums
    per window bucket, then windows from buckets) or ``auto`` (:func:`choose_plan`). All
    give the same values; the tests hold them to it. ``events`` and ``profiles`` name the
    relations to read: with an identity graph, those as of ``as_of``
    (``features.identity.as_of.IdentityGraph.sources``), so that no later link moves an
    event into a profile. ``ordered=False`` leaves the rows in no particular order (a consumer
    that sorts or streams them saves the sort of the whole feature table).
    """
    if plan == "auto":
        plan = choose_plan(fs)
    if plan not in ("windows", "buckets"):
        raise ValueError(f"plan must be 'auto', 'windows' or 'buckets', not {plan!r}")
    as_of_day = day_number(as_of)
    lowest = as_of - dt.timedelta(days=fs.lookback_days)
    day = dialect.day("timestamp")
    window = f"""(
        SELECT * FROM {events}
        WHERE timestamp < TIMESTAMP '{as_of} 00:00:00' AND timestamp >= TIMESTAMP '{lowest} 00:00:00'
    )"""
    if plan == "windows":
        rows = f"""
            SELECT profile_id, {as_of_day} AS as_of_day, {day} AS day, {as_of_day} - {day} AS ago,
                   {measure_columns(fs)}
            FROM {window}
        """
        aggregates = _window_aggregates(fs, rows, as_of_day)
    else:
        # Buckets read one row per profile and active day: distinct active days become sums
        # of daily flags (DuckDB runs each count(DISTINCT) as its own pass over the events).
        daily = f"""
            SELECT r.*, {as_of_day} AS as_of_day, {as_of_day} - r.day AS ago
            FROM ({rollup_sql(fs, dialect, events=window)}) r
        """
        aggregates = _aggregates(fs, daily, daily_rows=True)
    return features_sql_from(fs, aggregates, columns, dialect, where, ordered=ordered, profiles=profiles)


def build_snapshot(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    as_of: dt.date,
    plan: str = "auto",
    events: str = "events",
    profiles: str = "profiles",
) -> pd.DataFrame:
    """The feature table at ``as_of`` for every profile active in the lookback."""
    return con.execute(
        snapshot_sql(fs, as_of, relation_columns(con, profiles), events=events, plan=plan, profiles=profiles)
    ).df()


def build_rollup(
    con: duckdb.DuckDBPyConnection, fs: FeatureSet, table: str = "daily_rollup", events: str = "events"
) -> int:
    """Materialise the daily rollup of ``events`` once; returns its row count."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {rollup_sql(fs, events=events)}")
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def snapshots_sql(
    fs: FeatureSet,
    as_ofs: list[dt.date],
    columns: ProfileColumns = None,
    dialect: Dialect = DUCKDB,
    rollup: str = "daily_rollup",
    where: str | None = None,
    profiles: str = "profiles",
) -> str:
    """Every snapshot in one query: each rollup row joins the snapshots whose lookback holds it
    (profile attributes from ``profiles``)."""
    days = ", ".join(f"({day_number(d)})" for d in sorted(set(as_ofs)))
    rows = f"""
        SELECT r.*, s.as_of_day, s.as_of_day - r.day AS ago
        FROM {rollup} r
        JOIN (VALUES {days}) AS s(as_of_day)
          ON r.day < s.as_of_day AND r.day >= s.as_of_day - {fs.lookback_days}
    """
    return features_sql_from(
        fs, _aggregates(fs, rows, daily_rows=True), columns, dialect, where, profiles=profiles
    )
