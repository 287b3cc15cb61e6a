"""The daily rollup (one row per profile and active day, every measure summed or maxed) from
events that arrive sorted by (profile_key, time), without a hash aggregate.

An ingest writes its events in that order (``features.ingest.manifest``), so the rollup is a
projection DuckDB streams in file order (per event: the profile, the day and the measures,
0/1 counts packed four to a BIGINT) and NumPy adds up runs of equal (profile, day). A grouped
aggregate over 35M events with a million profiles and days as keys pays for a hash table of
~20M groups and its sort; the stream pays for neither. The first row out of order (events
not from an ingest, a view that joins them, an older ingest) stops the stream: the caller
rolls up with the grouped aggregate instead (``stacked_build``). Values equal that aggregate
exactly (the tests hold them to it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

import duckdb
import numba
import numpy as np

from propensity.features.build.feature_set import Measure
from propensity.features.connection import arrow_batches

# Rows per Arrow batch of the stream: large enough that NumPy's per-call overhead vanishes,
# small enough that a batch and its projection stay a few tens of MiB.
BATCH_ROWS = 1 << 20


@dataclass
class RollupColumns:
    """How each measure travels through the stream: packed 0/1 counts (BIGINT fields), exact
    decimals as BIGINT units, or DOUBLE (summed, or maxed when ``maxed``)."""

    packs: list[list[Measure]]
    scaled: list[tuple[Measure, int]]
    floats: list[Measure]
    bits: int
    maxed: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.maxed = [m.rollup == "max" for m in self.floats]

    def select(self) -> str:
        """The per-event SELECT list after profile_key and day: ints first, then floats (the
        day's event count is its run's length, no column)."""
        columns = [
            " + ".join(
                f"CASE WHEN {m.condition} THEN {1 << (self.bits * j)} ELSE 0 END" for j, m in enumerate(pack)
            )
            + f" AS packed_{i}"
            for i, pack in enumerate(self.packs)
        ]
        columns += [f"CAST(({m.sql}) * {10**scale} AS BIGINT) AS m_{m.name}" for m, scale in self.scaled]
        columns += [f"CAST({m.sql} AS DOUBLE) AS m_{m.name}" for m in self.floats]
        return ", ".join(columns)


@numba.njit(cache=True, nogil=True)
def _roll(pk, day, ints, n_ints, floats, n_floats, maxed):  # pragma: no cover - compiled
    """Runs of equal (pk, day) added up in one pass over the rows: (sorted, keys: pk, day and
    row count per run, per-run sums of each int column, per-run sums or maxima (``maxed``) of
    each float column skipping NaN (NULL), NaN when all are); ``sorted`` False, and empty
    arrays, when the rows are not in (pk, day) order. ``ints`` / ``floats``: tuples of
    columns, of which the first ``n_ints`` / ``n_floats`` are real (an empty tuple cannot be
    typed: the caller pads it)."""
    n = len(pk)
    n_runs = 0
    for i in range(n):
        if i == 0 or pk[i] != pk[i - 1] or day[i] != day[i - 1]:
            if i > 0 and (pk[i] < pk[i - 1] or (pk[i] == pk[i - 1] and day[i] < day[i - 1])):
                empty = np.zeros((0, 0), dtype=np.int64)
                return False, empty, empty, np.zeros((0, 0))
            n_runs += 1
    keys = np.zeros((3, n_runs), dtype=np.int64)
    sums = np.zeros((n_ints, n_runs), dtype=np.int64)
    folds = np.full((n_floats, n_runs), np.nan)
    r = -1
    for i in range(n):
        if i == 0 or pk[i] != pk[i - 1] or day[i] != day[i - 1]:
            r += 1
            keys[0, r] = pk[i]
            keys[1, r] = day[i]
        keys[2, r] += 1
        for j in range(n_ints):
            sums[j, r] += ints[j][i]
        for j in range(n_floats):
            v = floats[j][i]
            if np.isnan(v):
                continue
            best = folds[j, r]
            if np.isnan(best):
                folds[j, r] = v
            elif maxed[j]:
                folds[j, r] = max(best, v)
            else:
                folds[j, r] = best + v
    return True, keys, sums, folds


def _combine(a: float, b: float, is_max: bool) -> float:
    """Two partial sums or maxima of one run (NaN: no value)."""
    if np.isnan(a):
        return b
    if np.isnan(b):
        return a
    return max(a, b) if is_max else a + b


def _read_only(array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as ``dtype``, read-only: Arrow's zero-copy arrays are, and a tuple of columns
    types in numba only when every column agrees."""
    out = array.astype(dtype, copy=False).view()
    out.flags.writeable = False
    return out


def _rolled_batch(batch, columns: RollupColumns, n_ints: int) -> list[np.ndarray] | None:
    """One Arrow batch of events rolled up per (pk, day) run: pk, day, event count, int sums,
    float folds; None when the batch is out of order (an empty batch gives empty runs)."""
    arrays = [c.to_numpy(zero_copy_only=False) for c in batch.columns]
    ints = tuple(_read_only(a, np.int64) for a in arrays[2 : 2 + n_ints])
    floats = tuple(_read_only(a, np.float64) for a in arrays[2 + n_ints :])
    maxed = np.array(columns.maxed, dtype=np.bool_)
    in_order, keys, sums, folds = _roll(
        arrays[0],
        arrays[1],
        ints or (np.zeros(0, dtype=np.int64),),
        len(ints),
        floats or (np.zeros(0),),
        len(floats),
        maxed,
    )
    if not in_order:
        return None
    return [*keys, *sums, *folds]


def _append(parts: list, part: list[np.ndarray], columns: RollupColumns, n_ints: int) -> bool:
    """Add a batch's runs after the previous batches', folding a run the batch boundary split;
    False when the batch starts before the previous one ended (out of order)."""
    if not len(part[0]):
        return True
    if parts:
        last = parts[-1]
        key, last_key = (part[0][0], part[1][0]), (last[0][-1], last[1][-1])
        if key < last_key:
            return False
        if key == last_key:  # this batch continues the last run of the previous one
            for j in range(2, 3 + n_ints):
                part[j][0] += last[j][-1]
            for j, is_max in enumerate(columns.maxed, start=3 + n_ints):
                part[j][0] = _combine(last[j][-1], part[j][0], is_max)
            parts[-1] = [c[:-1] for c in last]
    parts.append(part)
    return True


def stream_rollup(con: duckdb.DuckDBPyConnection, source: str, columns: RollupColumns, day_sql: str):
    """(profile_key, day, int sums: the event count, then packed fields and scaled decimals,
    float sums / maxima) of the events of ``source`` per profile and day, each a list of
    columns, or None when the events do not arrive in (profile_key, day) order."""
    query = f"SELECT profile_key, {day_sql} AS day, {columns.select()} FROM {source}"
    n_ints = len(columns.packs) + len(columns.scaled)
    parts: list[list[np.ndarray]] = []  # per batch: pk, day, count, ints..., floats...
    reader = arrow_batches(con, query, BATCH_ROWS)
    try:
        for batch in reader:
            part = _rolled_batch(batch, columns, n_ints)
            if part is None or not _append(parts, part, columns, n_ints):
                return None  # out of order: the reader is closed, the connection free again
    finally:
        reader.close()
    width = 3 + n_ints + len(columns.floats)
    if not parts:
        out = [np.zeros(0, np.int64)] * (3 + n_ints) + [np.zeros(0)] * len(columns.floats)
    else:
        out = [np.concatenate([p[j] for p in parts]) for j in range(width)]
    return out[0], out[1], out[2 : 3 + n_ints], out[3 + n_ints :]


def _joined(parts: list[tuple]) -> tuple:
    """Rollups of consecutive profile-key ranges as one (no run spans two ranges)."""
    pk, day = (np.concatenate([p[j] for p in parts]) for j in (0, 1))
    ints = [np.concatenate([p[2][j] for p in parts]) for j in range(len(parts[0][2]))]
    floats = [np.concatenate([p[3][j] for p in parts]) for j in range(len(parts[0][3]))]
    return pk, day, ints, floats


def split_stream_rollup(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    condition: str,
    columns: RollupColumns,
    day_sql: str,
    key_bounds: list[int],
):
    """:func:`stream_rollup` of the rows of ``relation`` meeting ``condition``, as one stream
    per range ``[key_bounds[i], key_bounds[i + 1])`` of profile_key, each on a cursor of its
    own in a thread of its own, joined in key order; None when any range is out of order.

    One ordered stream keeps DuckDB's threads waiting on each other to hand batches over in
    order (measured at 150k profiles: 0.6 of a core busy on 2); ranges of a profile-sorted
    file are disjoint row groups, each streamed in order by its own thread, and the NumPy /
    numba work of each (which releases the GIL) overlaps the other's scan. A relation a cursor
    cannot see (a temp view or a registered table of ``con``) is streamed whole on ``con``.
    """
    source = f"(SELECT * FROM {relation} WHERE {condition})"
    if len(key_bounds) < 3:
        return stream_rollup(con, source, columns, day_sql)
    cursors = [con.cursor() for _ in key_bounds[1:]]
    try:
        try:
            cursors[0].execute(f"SELECT * FROM {relation} LIMIT 0").fetchall()
        except duckdb.Error:  # not visible from another connection
            return stream_rollup(con, source, columns, day_sql)
        ranges = [
            f"(SELECT * FROM {relation} WHERE ({condition}) AND profile_key >= {lo} AND profile_key < {hi})"
            for lo, hi in pairwise(key_bounds)
        ]
        with ThreadPoolExecutor(len(ranges)) as pool:
            parts = list(
                pool.map(lambda i: stream_rollup(cursors[i], ranges[i], columns, day_sql), range(len(ranges)))
            )
    finally:
        for cursor in cursors:
            cursor.close()
    if any(part is None for part in parts):
        return None
    return _joined(parts)
