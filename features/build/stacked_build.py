"""Stacked snapshots for training: many as-of dates from one scan of the events.

The events are condensed once into a daily rollup keyed by the integer ``profile_key`` and
sorted by (profile, day); every snapshot's windows then come from one compiled pass over it
(:mod:`propensity.features.build.kernels`). The values equal
:func:`propensity.features.build.sql_compiler.snapshots_sql`, the engine-neutral form; the tests
hold them to it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from propensity.features.build.feature_set import EVERY_EVENT, FeatureSet
from propensity.features.build.sql_compiler import day_number, features_sql_from
from propensity.features.connection import fetch_arrow, relation_columns
from propensity.features.identity.as_of import Reattributed
from propensity.features.sql import DUCKDB

if TYPE_CHECKING:  # numba loads only when a build runs (see features.build)
    from propensity.features.build.daily_rollup import RollupColumns


def _keyed(con: duckdb.DuckDBPyConnection, events: str) -> tuple[str, str]:
    """``events`` with an integer ``profile_key``, and the table that maps keys to profile_id.

    Ingested events carry the key (dense, in profile_id order, see ``features.identity``);
    other event tables get one here.
    """
    columns = {r[0] for r in con.execute(f"DESCRIBE {events}").fetchall()}
    if "profile_key" in columns:
        try:
            profiles = {r[0] for r in con.execute("DESCRIBE profiles").fetchall()}
        except duckdb.Error:
            profiles = set()
        if "profile_key" in profiles:
            return events, "profiles"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE snapshot_keys AS
        SELECT profile_id, (row_number() OVER (ORDER BY profile_id) - 1)::INTEGER AS profile_key
        FROM (SELECT DISTINCT profile_id FROM {events})
    """)
    other_columns = "e.* EXCLUDE (profile_key)" if "profile_key" in columns else "e.*"
    return (
        f"(SELECT {other_columns}, k.profile_key FROM {events} e JOIN snapshot_keys k USING (profile_id))",
        "snapshot_keys",
    )


# Daily counts of 0/1 measures travel packed, four to a BIGINT in 15-bit fields: DuckDB's
# grouped aggregation pays per aggregate and row, so one sum instead of four (at 1M profiles
# the 16-measure rollup took 5.5 s unpacked, 3.7 s packed) and a quarter of the columns to sort
# and fetch. Exact while no (profile, day) holds 2^15 events, which is checked.
PACK_BITS, PACK_FIELDS = 15, 4


def _decimal_scale(sql_type: str) -> int | None:
    """The scale of ``DECIMAL(p, s)`` (digits after the point), None for other types."""
    match = re.fullmatch(r"DECIMAL\(\s*\d+\s*,\s*(\d+)\s*\)", sql_type.strip(), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _rollup_columns(fs: FeatureSet, packed: bool) -> tuple[list, RollupColumns]:
    """The measures counted by the day's event count, and how the others travel."""
    from propensity.features.build.daily_rollup import RollupColumns

    measures = list(fs.measures.values())
    counted = [m for m in measures if m.condition == EVERY_EVENT]  # count(*) is their daily sum
    indicators = [m for m in measures if packed and m.condition not in (None, EVERY_EVENT)]
    packs = [indicators[i : i + PACK_FIELDS] for i in range(0, len(indicators), PACK_FIELDS)]
    plain = [m for m in measures if m not in counted and m not in indicators]
    scales = {m.name: _decimal_scale(m.sql_type) if m.rollup == "sum" else None for m in plain}
    # Decimals as whole units of their last digit (exact sums); others as DOUBLE, the float64
    # array the compiled pass reads.
    scaled = [(m, scales[m.name]) for m in plain if scales[m.name] is not None]
    floats = [m for m in plain if scales[m.name] is None]
    return counted, RollupColumns(packs, scaled, floats, PACK_BITS)


def _grouped_rollup(con: duckdb.DuckDBPyConnection, keyed: str, columns: RollupColumns, where: str):
    """The rollup by DuckDB's grouped aggregate, in :func:`.daily_rollup.stream_rollup`'s shape."""
    selects = ["count(*) AS event_rows"]
    for i, pack in enumerate(columns.packs):
        terms = " + ".join(
            f"CASE WHEN {m.condition} THEN {1 << (PACK_BITS * j)} ELSE 0 END" for j, m in enumerate(pack)
        )
        selects.append(f"CAST(sum({terms}) AS BIGINT) AS packed_{i}")
    selects += [f"CAST(sum({m.sql}) * {10**scale} AS BIGINT) AS m_{m.name}" for m, scale in columns.scaled]
    selects += [f"CAST({m.rollup}({m.sql}) AS DOUBLE) AS m_{m.name}" for m in columns.floats]
    day = DUCKDB.day("timestamp")
    rollup = con.execute(f"""
        SELECT profile_key, {day} AS day, {", ".join(selects)} FROM {keyed} {where}
        GROUP BY profile_key, {day} ORDER BY profile_key, day
    """).fetchnumpy()
    names = list(rollup)
    ints = [
        np.asarray(rollup[n], dtype=np.int64) for n in names[2 : 3 + len(columns.packs) + len(columns.scaled)]
    ]
    floats = [np.ma.filled(rollup[f"m_{m.name}"], np.nan).astype(np.float64) for m in columns.floats]
    key, day = (np.asarray(rollup[n], dtype=np.int64) for n in ("profile_key", "day"))
    return key, day, ints, floats


# Fewer profiles than this per stream: one stream (threads and cursors cost more than they save).
STREAM_MIN_PROFILES = 1024


def _key_bounds(con: duckdb.DuckDBPyConnection, keys: str | None, key_range: tuple | None) -> list[int]:
    """Ranges of profile_key, one per engine thread, for the split stream, within ``key_range``
    (all keys when None); no ranges (one stream) without a key table (events keyed here are
    not in key order anyway) or for few profiles."""
    if keys is None:
        return []
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    if key_range is None:
        n = con.execute(f"SELECT coalesce(max(profile_key), 0) + 1 FROM {keys}").fetchall()[0][0]
        low, high, ends = 0, n, (-(2**31), 2**31)
    else:
        low, high = key_range
        ends = key_range
    parts = max(1, min(threads, (high - low) // STREAM_MIN_PROFILES))
    if parts == 1:
        return []
    return [ends[0], *(low + (high - low) * i // parts for i in range(1, parts)), ends[1]]


def _daily_rollup(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    keyed: str,
    packed: bool,
    span: tuple | None = None,
    keys: str | None = None,
    key_range: tuple | None = None,
) -> dict | None:
    """The daily rollup of the events in ``span`` (from, before), all when None, sorted by
    (profile_key, day): per measure, a float64 array or a packed field
    (:class:`features.build.kernels.Packed`).

    Streamed without a grouped aggregate when the events arrive in (profile_key, time) order,
    as an ingest writes them (:mod:`.daily_rollup`), one stream per range of profile keys of
    ``keys`` (the table of keys); grouped by DuckDB otherwise. ``key_range`` (from, before):
    only the profiles of those keys. None when ``packed`` and a day has too many events for the
    packed fields.
    """
    from propensity.features.build.daily_rollup import split_stream_rollup

    counted, columns = _rollup_columns(fs, packed)
    condition = (
        f"timestamp >= TIMESTAMP '{span[0]} 00:00:00' AND timestamp < TIMESTAMP '{span[1]} 00:00:00'"
        if span
        else "TRUE"
    )
    if key_range is not None:
        condition += f" AND profile_key >= {int(key_range[0])} AND profile_key < {int(key_range[1])}"
    where = f"WHERE {condition}"
    bounds = _key_bounds(con, keys, key_range)
    rolled = split_stream_rollup(con, keyed, condition, columns, DUCKDB.day("timestamp"), bounds)
    if rolled is None:
        rolled = _grouped_rollup(con, keyed, columns, where)
    pk, days, ints, floats = rolled
    rows = ints[0]
    if columns.packs and len(rows) and rows.max() >= 1 << PACK_BITS:
        return None
    from propensity.features.build.kernels import Packed, Scaled

    # The compiled pass reads the packed fields in place: no unpacked copy of the counts.
    values: dict[str, np.ndarray | Packed | Scaled] = {m.name: Packed(rows, 0, 62) for m in counted}
    for i, pack in enumerate(columns.packs):
        sums = ints[1 + i]
        for j, m in enumerate(pack):
            values[m.name] = Packed(sums, PACK_BITS * j, PACK_BITS)
    for i, (m, scale) in enumerate(columns.scaled):  # a sum of a decimal, never NULL
        values[m.name] = Scaled(ints[1 + len(columns.packs) + i], scale)
    for i, m in enumerate(columns.floats):  # NaN where NULL (only maxima can be)
        values[m.name] = floats[i]
    return {"profile_key": pk, "day": days, **{m: values[m] for m in fs.measures}}


# The compiled pass's output for one batch of snapshots stays under this many bytes: the
# stacked table grows in DuckDB (which spills past its memory limit), not in NumPy.
BATCH_BYTES = 2 << 30


def _rollup_arrays(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    keyed: str,
    span: tuple | None = None,
    keys: str | None = None,
    key_range: tuple | None = None,
):
    """The daily rollup's keys, days and measure columns (packed when the counts allow) of the
    events in ``span`` (from, before), all when None, of the profiles in ``key_range``."""
    values = _daily_rollup(con, fs, keyed, True, span, keys, key_range)
    if values is None:  # a profile with 2^15 events in a day: the packed counts would overflow
        values = _daily_rollup(con, fs, keyed, False, span, keys, key_range)
    return values.pop("profile_key"), values.pop("day"), values


def _rows(values: dict, lo: int, hi: int) -> dict:
    """Rollup rows ``[lo, hi)`` of every measure, as views; packed fields that share a column
    keep sharing it."""
    columns: dict[int, np.ndarray] = {}
    out = {}
    for name, value in values.items():
        if isinstance(value, tuple):  # Packed / Scaled: a column and how to read it
            column = columns.setdefault(id(value.column), value.column[lo:hi])
            out[name] = value._replace(column=column)
        else:
            out[name] = value[lo:hi]
    return out


def _insert(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    stacked: pa.Table,
    ids: pa.Array,
    table: str,
    create: bool,
    aggregates: str = "SELECT * FROM _snapshot_aggregates",
    **features_options,
) -> None:
    """Features of the compiled pass's aggregates (``pk`` -> ``ids``) into ``table``."""
    stacked = stacked.append_column("profile_id", ids.take(stacked["pk"]))
    stacked = stacked.rename_columns(["profile_key" if c == "pk" else c for c in stacked.column_names])
    con.register("_snapshot_aggregates", stacked)
    columns = relation_columns(con, features_options.get("profiles", "profiles"))
    features_sql = features_sql_from(fs, aggregates, columns, DUCKDB, ordered=False, **features_options)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {table} AS {features_sql}"
        if create
        else f"INSERT INTO {table} {features_sql}"
    )
    con.unregister("_snapshot_aggregates")


def build_snapshots(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    as_ofs: list[dt.date],
    table: str = "snapshot_features",
    events: str = "events",
    where: str | None = None,
    reattributed: Reattributed | None = None,
    keep: str | None = None,
    key_range: tuple[int, int] | None = None,
) -> int:
    """Stacked feature tables for several as-of dates, as the temp table ``table``.

    The events are condensed once into a daily rollup keyed by the integer ``profile_key``
    and sorted by (profile, day); the windows of every snapshot then come from one compiled
    pass over it (``features.build.kernels``): no re-scan of the events, no join that copies the
    rollup once per snapshot. Snapshots go through the pass in batches whose output fits
    ``BATCH_BYTES``; ``where`` (a rule over ``f.`` feature columns, e.g. a population) keeps
    only the rows a caller needs. Values equal :func:`.sql_compiler.snapshots_sql` (the engine-neutral form,
    used on Spark); the tests hold them to it. Returns the number of rows.

    With ``reattributed`` (:meth:`features.identity.as_of.IdentityGraph.reattributed`), each
    date's rows of the final profiles whose identities were not one profile yet then are
    left out, and the profiles the graph at that date makes of them come from the same
    compiled pass over their events attributed as of that date; every other profile's events
    were its profile's then too.

    ``keep``: a table of (profile_id, as_of_day) rows; only those are stored (sampled training,
    :mod:`.training_sample`), the profiles built apart excepted. ``key_range`` (from, before):
    only the profiles whose ingest ``profile_key`` is in it (a partition of profiles: it reads
    only its row groups of the profile-sorted events).
    """
    keyed, keys = _keyed(con, events)
    _check_request(keys, as_ofs, key_range, reattributed)
    # Events on or after the last as-of date, or before the first one's lookback, are in no
    # snapshot.
    span = (min(as_ofs) - dt.timedelta(days=fs.lookback_days), max(as_ofs))
    pk, days, values = _rollup_arrays(con, fs, keyed, span, keys, key_range)
    # Keys are dense row numbers in key order: a take, not a join, gives each id back.
    ids = fetch_arrow(con, f"SELECT profile_id FROM {keys} ORDER BY profile_key")["profile_id"]
    skip = reattributed.skip if reattributed is not None else {}
    aggregates = _kept_aggregates(con, skip, keep)
    join_key = "profile_key" if keys == "profiles" else "profile_id"
    dates = [day_number(d) for d in sorted(set(as_ofs))]
    for start, end in _date_batches(fs, len(dates), len(ids)):
        _insert_pass(
            con, fs, (pk, days, values), dates[start:end], ids, table, start == 0, aggregates, where, join_key
        )
    if skip:
        con.unregister("_snapshot_skip")
    if reattributed is not None and len(reattributed.key_days):
        _insert_reattributed(con, fs, reattributed, table, where)
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def _check_request(
    keys: str, as_ofs: list[dt.date], key_range: tuple[int, int] | None, reattributed: Reattributed | None
) -> None:
    """What :func:`build_snapshots` refuses: no dates, or a key range or reattributed profiles
    over events not keyed by the ingest (``keys`` not ``profiles``)."""
    if key_range is not None and keys != "profiles":
        raise ValueError("a key range needs events and profiles keyed by the ingest's profile_key")
    if reattributed is not None and keys != "profiles":
        raise ValueError("reattributed profiles need events and profiles keyed by the ingest's profile_key")
    if not as_ofs:
        raise ValueError("build_snapshots needs at least one as-of date")


def _date_batches(fs: FeatureSet, n_dates: int, n_profiles: int) -> list[tuple[int, int]]:
    """[start, end) of the dates each compiled pass takes: as many as keep its output (up to
    one row per profile and date) under ``BATCH_BYTES``."""
    from propensity.features.build.kernels import WindowPlan

    plan = WindowPlan.of(fs, list(fs.measures))
    row_bytes = 8 + 4 * plan.n_counts + 8 * plan.n_amounts
    per_batch = max(1, BATCH_BYTES // max(1, n_profiles * row_bytes))
    return [(start, min(n_dates, start + per_batch)) for start in range(0, n_dates, per_batch)]


def _insert_pass(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    rollup: tuple,
    dates: list[int],
    ids: pa.Array,
    table: str,
    create: bool,
    aggregates: str,
    where: str | None,
    join_key: str,
) -> None:
    """The compiled pass over the rollup (pk, days, values) for ``dates`` (day numbers), its
    rows' features into ``table`` (created when ``create``)."""
    # Compiled on first use; numba loads only here.
    from propensity.features.build.kernels import window_kernel

    stacked = window_kernel(*rollup, fs, dates)
    _insert(con, fs, stacked, ids, table, create, aggregates, where=where, join_key=join_key)


def _kept_aggregates(
    con: duckdb.DuckDBPyConnection, skip: dict[int, np.ndarray], keep: str | None = None
) -> str:
    """The query of the kernel's aggregates to keep: all, or (registering ``_snapshot_skip``)
    all but the profile keys ``skip`` lists per as-of day; with ``keep``, only its
    (profile_id, as_of_day) rows."""
    kept = f" SEMI JOIN {keep} k ON k.profile_id = a.profile_id AND k.as_of_day = a.as_of_day" if keep else ""
    if not skip:
        return f"SELECT a.* FROM _snapshot_aggregates a{kept}"
    con.register(
        "_snapshot_skip",
        pa.table(
            {
                "profile_key": np.concatenate(list(skip.values())).astype(np.int32),
                "as_of_day": np.repeat(np.array(list(skip), dtype=np.int32), [len(k) for k in skip.values()]),
            }
        ),
    )
    skipped = " ANTI JOIN _snapshot_skip USING (profile_key, as_of_day)"
    return f"SELECT a.* FROM _snapshot_aggregates a{skipped}{kept}"


def _insert_reattributed(
    con: duckdb.DuckDBPyConnection, fs: FeatureSet, reattributed: Reattributed, table: str, where: str | None
) -> None:
    """Rows of the profiles built apart: one rollup of their events, then the compiled pass
    over each date's keys (contiguous, keys being in date order) with that date alone."""
    from propensity.features.build.kernels import window_kernel

    pk, days, values = _rollup_arrays(con, fs, reattributed.events, keys=reattributed.keys)
    ids = fetch_arrow(con, f"SELECT profile_id FROM {reattributed.keys} ORDER BY profile_key")["profile_id"]
    key_days = reattributed.key_days
    parts = []
    for day in np.unique(key_days):
        first_key, end_key = np.searchsorted(key_days, day), np.searchsorted(key_days, day, side="right")
        lo, hi = np.searchsorted(pk, first_key), np.searchsorted(pk, end_key)
        if hi > lo:
            parts.append(window_kernel(pk[lo:hi], days[lo:hi], _rows(values, lo, hi), fs, [int(day)]))
    if parts:
        _insert(
            con,
            fs,
            pa.concat_tables(parts),
            ids,
            table,
            False,
            where=where,
            join_key="profile_key",
            profiles=reattributed.profiles,
        )
