"""The compiled window pass behind stacked snapshots (``features.builders.build_snapshots``).

Rows are a daily rollup sorted by (profile, day); for each as-of date one pass computes every
aggregate of the registry: sums, active days, maxima, first and last active days over
half-open windows ``[as_of - start, as_of - end)``. Its results equal the SQL form
(``features.builders.snapshots_sql``); the tests hold them to it.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from features.registry import FeatureSet

FUNCTION_CODES = {"sum": 0, "active_days": 1, "max": 2, "last_day": 3, "first_day": 4}


@numba.njit(cache=True, nogil=True)
def _present_positions(profile_rows, days, as_of_day, lookback):  # pragma: no cover - compiled
    """Output row of each profile with any day in [as_of - lookback, as_of), else -1."""
    position = np.full(len(profile_rows) - 1, -1, dtype=np.int64)
    count = 0
    for p in range(len(profile_rows) - 1):
        for i in range(profile_rows[p], profile_rows[p + 1]):
            ago = as_of_day - days[i]
            if 1 <= ago <= lookback:
                position[p] = count
                count += 1
                break
    return position, count


@numba.njit(cache=True, parallel=True, nogil=True)
def _window_pass(profile_rows, days, values, measure_of, fn_of, start_of, end_of, as_of_day, lookback,
                 position, out):  # pragma: no cover - compiled
    """One pass over one snapshot: each in-lookback row updates the windows that hold it."""
    for p in numba.prange(len(profile_rows) - 1):
        row = position[p]
        if row < 0:
            continue
        # Accumulate in a small local buffer (cache-resident), write the output row once.
        acc = np.empty(len(fn_of))
        for a in range(len(fn_of)):
            acc[a] = 0.0 if fn_of[a] <= 1 else np.nan
        for i in range(profile_rows[p], profile_rows[p + 1]):
            ago = as_of_day - days[i]
            if ago < 1 or ago > lookback:
                continue
            for a in range(len(fn_of)):
                if ago > start_of[a]:
                    break  # aggregates come longest window first: no later one holds this row
                if ago <= end_of[a]:
                    continue
                v = values[i, measure_of[a]]
                f = fn_of[a]
                if f == 0:
                    acc[a] += v
                elif f == 1:
                    if v > 0:
                        acc[a] += 1.0
                elif f == 2:
                    if not np.isnan(v) and (np.isnan(acc[a]) or v > acc[a]):
                        acc[a] = v
                elif v > 0:
                    d = float(days[i])
                    if np.isnan(acc[a]) or (f == 3 and d > acc[a]) or (f == 4 and d < acc[a]):
                        acc[a] = d
        for a in range(len(fn_of)):
            out[row, a] = acc[a]


def window_kernel(pk: np.ndarray, days: np.ndarray, values: dict[str, np.ndarray], fs: FeatureSet,
                   as_of_days: list[int]) -> list[pa.Table]:
    """Aggregates of every snapshot from rollup rows sorted by (pk, day), one compiled pass each.

    Work per snapshot is (rows in the lookback) x (windows holding each row): no hashing, no
    copies of the rollup per snapshot.
    """
    n = len(pk)
    profile_rows = np.flatnonzero(np.concatenate([[True], pk[1:] != pk[:-1], [True]])) if n else np.zeros(1, np.int64)
    profiles = pk[profile_rows[:-1]]
    names = list(values)
    # Column-major: filling it is one contiguous copy per measure, and the compiled pass
    # reads each measure's column in row order.
    matrix = np.empty((n, len(names)), order="F")
    for j, name in enumerate(names):
        matrix[:, j] = values[name]
    # Longest window first, so the compiled pass can stop early for old rows.
    aggregates = sorted(fs.aggregates.values(),
                        key=lambda a: -(fs.lookback_days if a.start is None else a.start))
    measure_of = np.array([names.index(a.measure) for a in aggregates], dtype=np.int64)
    fn_of = np.array([FUNCTION_CODES[a.fn] for a in aggregates], dtype=np.int64)
    start_of = np.array([fs.lookback_days if a.start is None else a.start for a in aggregates], dtype=np.int64)
    end_of = np.array([a.end for a in aggregates], dtype=np.int64)
    tables = []
    for as_of_day in as_of_days:
        position, count = _present_positions(profile_rows, days, as_of_day, fs.lookback_days)
        out = np.empty((count, len(aggregates)), order="F")
        _window_pass(profile_rows, days, matrix, measure_of, fn_of, start_of, end_of, as_of_day,
                     fs.lookback_days, position, out)
        columns = {"pk": profiles[position >= 0].astype(np.int32),
                   "as_of_day": np.full(count, as_of_day, dtype=np.int32)}
        for j, a in enumerate(aggregates):
            # from_pandas: NaN becomes NULL, which is what the feature SQL tests for.
            columns[a.name] = out[:, j] if fn_of[j] <= 1 else pa.array(out[:, j], from_pandas=True)
        tables.append(pa.table(columns))
    return tables
