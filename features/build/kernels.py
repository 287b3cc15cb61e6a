"""The compiled window pass behind stacked snapshots (``features.build.stacked_build.build_snapshots``).

Rows are a daily rollup sorted by (profile, day). Each profile's rows are visited once for
all as-of dates together: one pass builds the profile's running sums (and running "last /
next active row" indices), after which every window of every snapshot is a difference of
two running sums found by binary search on the profile's days. Work is
``rows x measures + profiles x snapshots x (edges x log(rows) + aggregates)`` instead of
``rows x snapshots x windows``. Results equal the SQL form
(``features.build.sql_compiler.snapshots_sql``); the tests hold them to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import pyarrow as pa

from propensity.features.build.feature_set import FeatureSet

# How an aggregate reads its window [lo, hi) of a profile's rows.
SUM, ACTIVE_DAYS, MAX, LAST_DAY, FIRST_DAY = 0, 1, 2, 3, 4
FUNCTION_CODES = {
    "sum": SUM,
    "active_days": ACTIVE_DAYS,
    "max": MAX,
    "last_day": LAST_DAY,
    "first_day": FIRST_DAY,
}


@numba.njit(cache=True, parallel=True, nogil=True)
def _present(profile_rows, days, as_of_days, lookback):  # pragma: no cover - compiled
    """Whether each profile has a row in each snapshot's lookback [as_of - lookback, as_of)."""
    n_profiles = len(profile_rows) - 1
    present = np.zeros((len(as_of_days), n_profiles), dtype=np.bool_)
    for p in numba.prange(n_profiles):
        own = days[profile_rows[p] : profile_rows[p + 1]]
        for s in range(len(as_of_days)):
            i = np.searchsorted(own, as_of_days[s] - lookback)
            present[s, p] = i < len(own) and own[i] < as_of_days[s]
    return present


@numba.njit(cache=True, nogil=True)
def _number_rows(present):  # pragma: no cover - compiled
    """Output row of each (snapshot, profile), snapshots stacked in order, or -1 if absent."""
    row_of = np.full(present.shape, -1, dtype=np.int64)
    row = 0
    for s in range(present.shape[0]):
        for p in range(present.shape[1]):
            if present[s, p]:
                row_of[s, p] = row
                row += 1
    return row_of, row


class Packed(NamedTuple):
    """A measure stored as ``bits`` bits from ``shift`` of an int64 column (see the rollup)."""

    column: np.ndarray
    shift: int
    bits: int


class Scaled(NamedTuple):
    """An exact decimal measure as an int64 count of 10^-``scale`` units: integer running sums
    stay exact (below 2^53 units), so window sums equal the engine's decimal sums."""

    column: np.ndarray
    scale: int


# Runs of profiles the compiled pass shares out over the threads: enough to balance them, few
# enough that each run's scratch space is allocated once for many profiles.
PASS_CHUNKS = 1024


@numba.njit(cache=True, nogil=True)
def _chunk_values(floats, packed, m, start, end):  # pragma: no cover - compiled
    """Every measure's value at rollup rows [start, end), one row per measure: each column is
    picked once per chunk (a tuple indexed at run time is slow per element) and read once."""
    m_kind, m_index, m_shift, m_mask = m
    values = np.empty((len(m_kind), end - start))
    for j in range(len(m_kind)):
        if m_kind[j] == 0:
            column = floats[m_index[j]]
            for r in range(start, end):
                values[j, r - start] = column[r]
        else:
            ints = packed[m_index[j]]
            shift, mask = m_shift[j], m_mask[j]
            for r in range(start, end):
                values[j, r - start] = float(ints[r]) if m_kind[j] == 2 else float((ints[r] >> shift) & mask)
    return values


@numba.njit(cache=True, nogil=True)
def _chunk_sums(profile_rows, p0, p1, values, slot_measure, slot_counts_days):  # pragma: no cover
    """Running sums of each slot over each profile of [p0, p1): ``running[k, base + i]`` is the
    sum of the profile's first i rows, ``base`` its first row in the chunk plus its place (one
    leading zero per profile, so every profile's sums start from 0 as in SQL's sum)."""
    start = profile_rows[p0]
    running = np.empty((len(slot_measure), profile_rows[p1] - start + p1 - p0))
    for k in range(len(slot_measure)):
        own = values[slot_measure[k]]
        for p in range(p0, p1):
            first, end = profile_rows[p] - start, profile_rows[p + 1] - start
            base = first + p - p0
            total = 0.0
            running[k, base] = 0.0
            for i in range(end - first):
                v = own[first + i]
                if slot_counts_days[k]:
                    total += 1.0 if v > 0 else 0.0
                elif not np.isnan(v):  # as SQL's sum, which skips NULLs
                    total += v
                running[k, base + i + 1] = total
    return running


@numba.njit(cache=True, nogil=True)
def _chunk_marks(profile_rows, p0, p1, values, mark_measure):  # pragma: no cover - compiled
    """Per mark and profile of [p0, p1), at ``base + i`` (as in :func:`_chunk_sums`): the last
    row <= i where the measure is > 0 (else -1), and the first row >= i where it is (else n)."""
    start = profile_rows[p0]
    size = profile_rows[p1] - start + p1 - p0
    last_active = np.empty((len(mark_measure), size), dtype=np.int64)
    next_active = np.empty((len(mark_measure), size), dtype=np.int64)
    for k in range(len(mark_measure)):
        own = values[mark_measure[k]]
        for p in range(p0, p1):
            first, n = profile_rows[p] - start, profile_rows[p + 1] - profile_rows[p]
            base = first + p - p0
            last = -1
            for i in range(n):
                if own[first + i] > 0:
                    last = i
                last_active[k, base + i] = last
            following = n
            next_active[k, base + n] = n
            for i in range(n - 1, -1, -1):
                if own[first + i] > 0:
                    following = i
                next_active[k, base + i] = following
    return last_active, next_active


@numba.njit(cache=True, nogil=True)
def _chunk_bounds(profile_rows, p0, p1, days, as_of, edges, rows):  # pragma: no cover - compiled
    """``bounds[e, q]``: the first row of profile p0 + q on or after day ``as_of - edges[e]``
    (profile-relative), for the profiles with an output row (``rows[p] >= 0``)."""
    bounds = np.zeros((len(edges), p1 - p0), dtype=np.int64)
    for p in range(p0, p1):
        if rows[p] >= 0:
            own = days[profile_rows[p] : profile_rows[p + 1]]
            for e in range(len(edges)):
                bounds[e, p - p0] = np.searchsorted(own, as_of - edges[e])
    return bounds


@numba.njit(cache=True, parallel=True, nogil=True)
def _window_pass(
    profile_rows, days, floats, packed, m, m_scale, plan, as_of_days, row_of, counts, amounts, chunks
):  # pragma: no cover
    """Every aggregate of every snapshot, one visit of each profile's rows.

    Measure j is read from ``floats`` or ``packed`` (``m``: kinds, indices, shifts, masks, see
    :func:`_chunk_values`), in units of 1 / ``m_scale[j]`` (exact decimals travel as
    integers, divided once per output). ``plan`` (:class:`WindowPlan`'s arrays): slots are
    running sums (of a measure, or of days where it is > 0), marks the measures whose last /
    next active row is tracked; ``source_of`` points an aggregate at its slot, mark or (for
    max) measure; ``lo_edge`` / ``hi_edge`` index ``edges`` (days before as_of): its window is
    the rows with day in [as_of - edges[lo], as_of - edges[hi]). ``row_of[s, p]``: the output
    row of profile p in snapshot s, or -1. Whole-number aggregates go to column
    ``-1 - column_of[a]`` of the int32 ``counts``, the others to column ``column_of[a]`` of
    ``amounts`` (NaN: no value).

    Profiles go in up to ``chunks`` chunks (scratch space allocated once per chunk, chunks over
    the threads);
    within a chunk each aggregate of a snapshot is written as one run down its column, the
    profiles' rows being consecutive there, with no per-value dispatch on the aggregate.
    """
    slot_measure, slot_counts_days, mark_measure, edges, fn_of, source_of, lo_edge, hi_edge, column_of = plan
    n_profiles = len(profile_rows) - 1
    n_chunks = min(n_profiles, chunks)
    for chunk in numba.prange(n_chunks):
        p0, p1 = chunk * n_profiles // n_chunks, (chunk + 1) * n_profiles // n_chunks
        start = profile_rows[p0]
        values = _chunk_values(floats, packed, m, start, profile_rows[p1])
        running = _chunk_sums(profile_rows, p0, p1, values, slot_measure, slot_counts_days)
        last_active, next_active = _chunk_marks(profile_rows, p0, p1, values, mark_measure)
        for s in range(len(as_of_days)):
            rows = row_of[s]
            bounds = _chunk_bounds(profile_rows, p0, p1, days, as_of_days[s], edges, rows)
            for a in range(len(fn_of)):
                f, src, c = fn_of[a], source_of[a], column_of[a]
                lows, highs = bounds[lo_edge[a]], bounds[hi_edge[a]]
                for p in range(p0, p1):
                    row = rows[p]
                    if row < 0:
                        continue
                    first, n = profile_rows[p] - start, profile_rows[p + 1] - profile_rows[p]
                    base, lo, hi = first + p - p0, lows[p - p0], highs[p - p0]
                    if c < 0:
                        counts[row, -1 - c] = np.int32(running[src, base + hi] - running[src, base + lo])
                    elif f in (SUM, ACTIVE_DAYS):
                        total = running[src, base + hi] - running[src, base + lo]
                        amounts[row, c] = total / m_scale[slot_measure[src]]
                    elif f == LAST_DAY:
                        i = last_active[src, base + hi - 1] if hi > lo else -1
                        amounts[row, c] = float(days[start + first + i]) if i >= lo else np.nan
                    elif f == FIRST_DAY:
                        i = next_active[src, base + lo] if hi > lo else n
                        amounts[row, c] = float(days[start + first + i]) if i < hi else np.nan
                    else:
                        amounts[row, c] = _window_max(values[src], first + lo, first + hi) / m_scale[src]


@numba.njit(inline="always")
def _window_max(values, lo, hi):  # pragma: no cover - compiled
    """The largest non-NaN value in ``values[lo:hi]``, NaN when there is none."""
    best = np.nan
    for i in range(lo, hi):
        v = values[i]
        if not np.isnan(v) and (np.isnan(best) or v > best):
            best = v
    return best


@dataclass(frozen=True)
class WindowPlan:
    """The registry's aggregates as arrays the compiled pass reads."""

    names: list[str]
    fn_of: np.ndarray
    source_of: np.ndarray
    lo_edge: np.ndarray
    hi_edge: np.ndarray
    edges: np.ndarray
    slot_measure: np.ndarray
    slot_counts_days: np.ndarray
    mark_measure: np.ndarray
    column_of: np.ndarray
    n_counts: int
    n_amounts: int

    @classmethod
    def of(cls, fs: FeatureSet, measures: list[str]) -> WindowPlan:
        """The pass's plan for these measures of ``fs``: slots, marks and output columns."""
        aggregates = list(fs.aggregates.values())
        edges = sorted(
            {fs.lookback_days}
            | {fs.lookback_days if a.start is None else a.start for a in aggregates}
            | {a.end for a in aggregates},
            reverse=True,
        )
        slots: dict[tuple[int, bool], int] = {}
        marks: dict[int, int] = {}
        fn_of, source_of, lo_edge, hi_edge, column_of = [], [], [], [], []
        n_counts = n_amounts = 0
        for a in aggregates:
            measure = measures.index(a.measure)
            code = FUNCTION_CODES[a.fn]
            if code in (SUM, ACTIVE_DAYS):
                source = slots.setdefault((measure, code == ACTIVE_DAYS), len(slots))
            elif code in (LAST_DAY, FIRST_DAY):
                source = marks.setdefault(measure, len(marks))
            else:
                source = measure
            # Whole numbers travel as int32: half the memory of float64, and exact.
            if code == ACTIVE_DAYS or (code == SUM and fs.measures[a.measure].sql_type == "INTEGER"):
                column_of.append(-1 - n_counts)
                n_counts += 1
            else:
                column_of.append(n_amounts)
                n_amounts += 1
            fn_of.append(code)
            source_of.append(source)
            # Larger "days before" is the older bound, so it gives the window's first row.
            lo_edge.append(edges.index(fs.lookback_days if a.start is None else a.start))
            hi_edge.append(edges.index(a.end))
        as_array = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
        return cls(
            names=[a.name for a in aggregates],
            fn_of=as_array(fn_of),
            source_of=as_array(source_of),
            lo_edge=as_array(lo_edge),
            hi_edge=as_array(hi_edge),
            edges=as_array(edges),
            slot_measure=as_array([m for m, _ in slots]),
            slot_counts_days=np.array([d for _, d in slots], dtype=np.bool_),
            mark_measure=as_array(list(marks)),
            column_of=as_array(column_of),
            n_counts=n_counts,
            n_amounts=n_amounts,
        )


def window_kernel(
    pk: np.ndarray,
    days: np.ndarray,
    values: dict[str, np.ndarray | Packed | Scaled],
    fs: FeatureSet,
    as_of_days: list[int],
    chunks: int = PASS_CHUNKS,
) -> pa.Table:
    """Aggregates of every snapshot from rollup rows sorted by (pk, day).

    ``values`` maps each measure to its column (float64, NaN for NULL), to a :class:`Packed`
    field of an int64 column or to a :class:`Scaled` decimal, read in place. Returns one table:
    ``pk``, ``as_of_day`` and one column per aggregate, snapshots in the order given and
    profiles in ``pk`` order within each. ``chunks``: how many runs of profiles the pass shares
    out over the threads (the values never depend on it; the tests vary it).
    """
    n = len(pk)
    profile_rows = (
        np.flatnonzero(np.concatenate([[True], pk[1:] != pk[:-1], [True]])) if n else np.zeros(1, np.int64)
    )
    profiles = pk[profile_rows[:-1]]
    plan = WindowPlan.of(fs, list(values))
    floats_in, packed_in, measures_read, scale = _measure_columns(values)
    as_of = np.array(as_of_days, dtype=np.int64)
    present = _present(profile_rows, days, as_of, fs.lookback_days)
    row_of, total = _number_rows(present)
    # Column-major: each aggregate's column is contiguous, handed to Arrow without a copy.
    counts = np.empty((total, plan.n_counts), dtype=np.int32, order="F")
    amounts = np.empty((total, plan.n_amounts), order="F")
    plan_arrays = (
        plan.slot_measure,
        plan.slot_counts_days,
        plan.mark_measure,
        plan.edges,
        plan.fn_of,
        plan.source_of,
        plan.lo_edge,
        plan.hi_edge,
        plan.column_of,
    )
    _window_pass(
        profile_rows,
        days,
        floats_in,
        packed_in,
        measures_read,
        scale,
        plan_arrays,
        as_of,
        row_of,
        counts,
        amounts,
        chunks,
    )
    columns = {
        "pk": np.concatenate([profiles[present[s]] for s in range(len(as_of))]).astype(np.int32),
        "as_of_day": np.repeat(as_of.astype(np.int32), present.sum(axis=1)),
    }
    return _aggregate_table(columns, plan, counts, amounts)


def _measure_columns(
    values: dict[str, np.ndarray | Packed | Scaled],
) -> tuple[tuple, tuple, tuple, np.ndarray]:
    """The measures as the pass reads them: the float columns, the distinct packed columns, and
    per measure its (kind, column index, shift, mask) and decimal scale."""
    # Tuples, not a matrix: the columns are read where they lie, never copied or unpacked.
    floats: list[np.ndarray] = []
    packed: list[np.ndarray] = []
    packed_at: dict[int, int] = {}  # id of a packed column -> its place in ``packed``
    kind, index, shift, mask = (np.zeros(len(values), dtype=np.int64) for _ in range(4))
    scale = np.ones(len(values))
    for j, value in enumerate(values.values()):
        if isinstance(value, (Packed, Scaled)):
            if id(value.column) not in packed_at:
                packed_at[id(value.column)] = len(packed)
                packed.append(np.ascontiguousarray(value.column, dtype=np.int64))
            index[j] = packed_at[id(value.column)]
            if isinstance(value, Packed):
                kind[j], shift[j], mask[j] = 1, value.shift, (1 << value.bits) - 1
            else:
                kind[j], scale[j] = 2, 10.0**value.scale
        else:
            floats.append(np.ascontiguousarray(value, dtype=np.float64))
            index[j] = len(floats) - 1
    # An empty tuple cannot be indexed at run time: a placeholder keeps the types whole.
    floats_in = tuple(floats) or (np.zeros(0),)
    packed_in = tuple(packed) or (np.zeros(0, dtype=np.int64),)
    return floats_in, packed_in, (kind, index, shift, mask), scale


def _aggregate_table(columns: dict, plan: WindowPlan, counts: np.ndarray, amounts: np.ndarray) -> pa.Table:
    """``columns`` (the keys) and one column per aggregate, taken from the pass's output in place."""
    for name, c, fn in zip(plan.names, plan.column_of, plan.fn_of, strict=False):
        # from_pandas: NaN becomes NULL, which is what the feature SQL tests for; sums are never NULL.
        columns[name] = (
            counts[:, -1 - c]
            if c < 0
            else amounts[:, c]
            if fn == SUM
            else pa.array(amounts[:, c], from_pandas=True)
        )
    return pa.table(columns)
