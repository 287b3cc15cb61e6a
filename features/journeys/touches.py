"""Touchpoint paths for attribution: the touch query (written once, run on either engine through
a :class:`~propensity.features.journeys.engine.Runner`) and its rows encoded as :class:`Paths`.

Each profile with an event in the period is one path: a converter's touchpoints in the lookback
window before its first outcome event, a non-converter's in the lookback window before the end
of the data. The outcome event itself is never a touchpoint.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from propensity.core.errors import UserError
from propensity.features.journeys.engine import Runner
from propensity.features.journeys.spec import Step
from propensity.features.sql import Dialect

MICROS = 1_000_000


def touches_sql(
    outcome: Step,
    events: str,
    end: dt.datetime,
    since: dt.datetime,
    lookback_seconds: int,
    dialect: Dialect,
    by: str = "channel",
    touch_types: list[str] | None = None,
    columns: set[str] | None = None,
) -> str:
    """One row per touchpoint of each path (``profile_id``, ``converted_at`` micros or NULL,
    ``t``, ``touch``), and one row with NULL ``t`` and ``touch`` for a path without any."""
    if columns is not None and by not in columns:
        raise UserError(f"attribution: the events have no column '{by}' to credit")
    q = dialect.ident
    lookback = lookback_seconds * MICROS
    end_us = dialect.micros(dialect.timestamp(end))
    since_us = dialect.micros(dialect.timestamp(since))
    hit = outcome.condition(columns, dialect.quote)
    touch = f"{q(by)} IS NOT NULL AND NOT {hit}"
    if touch_types:
        listed = ", ".join("'" + t.replace("'", "''") + "'" for t in touch_types)
        touch += f" AND {q('event_type')} IN ({listed})"
    return f"""
        WITH e AS (
            SELECT {q("profile_id")} AS pid, {dialect.micros(q("timestamp"))} AS t,
                   CAST({q(by)} AS {dialect.string_type}) AS v, {hit} AS o, {touch} AS tp
            FROM {events}
            WHERE {q("timestamp")} < {dialect.timestamp(end)} AND {q("profile_id")} IS NOT NULL
              AND {dialect.micros(q("timestamp"))} >= {since_us} - {lookback}
        ), conv AS (
            SELECT pid, min(t) AS ct FROM e WHERE o AND t >= {since_us} GROUP BY pid
        ), people AS (
            SELECT DISTINCT pid FROM e WHERE t >= {since_us}
        ), u AS (
            SELECT p.pid, c.ct FROM people p LEFT JOIN conv c ON p.pid = c.pid
        )
        SELECT u.pid AS profile_id, u.ct AS converted_at, e.t, e.v AS touch
        FROM u LEFT JOIN e
          ON e.pid = u.pid AND e.tp AND e.t < coalesce(u.ct, {end_us})
         AND e.t >= coalesce(u.ct, {end_us}) - {lookback}
        ORDER BY 1, 3, 4
    """


@dataclass
class Paths:
    """Touchpoint paths as arrays. Paths are sorted by profile; touches by path, time, channel."""

    profile_id: np.ndarray  # (paths,)
    converted: np.ndarray  # (paths,) bool
    converted_at: np.ndarray  # (paths,) micros, -1 for non-converters
    channels: list[str]  # code -> name, sorted
    touch_path: np.ndarray  # (touches,) int64 path index
    touch_channel: np.ndarray  # (touches,) int64 channel code
    touch_time: np.ndarray  # (touches,) micros

    @property
    def n_paths(self) -> int:
        return len(self.profile_id)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Dense codes of a column's values in sorted order (so the same values always get the
    same codes, whatever the engine's row order), and the sorted values."""
    import pyarrow.compute as pc

    values = pc.unique(column.drop_null() if column.null_count else column)
    values = values.take(pc.sort_indices(values))
    codes = pc.index_in(column, value_set=values).to_numpy(zero_copy_only=False)
    return codes, values.to_pylist()


def paths_from_arrow(table: pa.Table) -> Paths:
    """The rows of :func:`touches_sql` as :class:`Paths` (deterministic whatever the row order)."""
    import pyarrow.compute as pc

    table = table.combine_chunks()
    path, profiles = _codes(table.column("profile_id"))
    n = len(profiles)
    converted_at = np.full(n, -1, dtype=np.int64)
    at = table.column("converted_at").fill_null(-1).to_numpy()
    converted_at[path] = at  # the same for every row of a profile
    touched = pc.is_valid(table.column("touch")).to_numpy(zero_copy_only=False)
    touches = table.filter(pa.array(touched))
    channel, channels = _codes(touches.column("touch"))
    path = path[touched].astype(np.int64)
    channel = channel.astype(np.int64)
    time = touches.column("t").to_numpy().astype(np.int64)
    # The query returns the rows in this order already; sort only when an engine did not.
    same_path, same_time = path[1:] == path[:-1], time[1:] == time[:-1]
    ordered = (
        (path[1:] > path[:-1])
        | (same_path & (time[1:] > time[:-1]))
        | (same_path & same_time & (channel[1:] >= channel[:-1]))
    ).all()
    order = slice(None) if ordered else np.lexsort((channel, time, path))
    return Paths(
        profile_id=np.asarray(profiles, dtype=object),
        converted=converted_at >= 0,
        converted_at=converted_at,
        channels=[str(c) for c in channels],
        touch_path=path[order],
        touch_channel=channel[order],
        touch_time=time[order],
    )


def paths_from_lists(
    sequences: list[list[str]], converted: list[bool], times: list[list[float]] | None = None
) -> Paths:
    """Paths from Python lists (one list of channels per path; times in seconds before the
    conversion, default one hour apart): for notebooks and tests."""
    channels = sorted({c for s in sequences for c in s})
    code = {c: i for i, c in enumerate(channels)}
    tp, tc, tt = [], [], []
    for i, seq in enumerate(sequences):
        for j, c in enumerate(seq):
            tp.append(i)
            tc.append(code[c])
            before = times[i][j] if times is not None else 3600.0 * (len(seq) - j)
            tt.append(int(10**15 - before * MICROS))
    n = len(sequences)
    return Paths(
        profile_id=np.array([f"p{i:09d}" for i in range(n)], dtype=object),
        converted=np.asarray(converted, dtype=bool),
        converted_at=np.where(np.asarray(converted, dtype=bool), 10**15, -1).astype(np.int64),
        channels=channels,
        touch_path=np.asarray(tp, dtype=np.int64),
        touch_channel=np.asarray(tc, dtype=np.int64),
        touch_time=np.asarray(tt, dtype=np.int64),
    )


# --- rules ------------------------------------------------------------------------------------


def run_touches(
    runner: Runner,
    outcome: Step,
    events: str,
    end: dt.datetime,
    since: dt.datetime,
    lookback_seconds: int,
    by: str = "channel",
    touch_types: list[str] | None = None,
) -> Paths:
    """The touchpoint paths on one engine."""
    columns = runner.columns(events)
    sql = touches_sql(outcome, events, end, since, lookback_seconds, runner.dialect, by, touch_types, columns)
    return paths_from_arrow(runner.query(sql))
