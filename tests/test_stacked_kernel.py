"""The compiled window pass behind stacked snapshots (``features.build.kernels``): its values do
not depend on how the profiles are shared out in chunks (many profiles per chunk share one
scratch space, offsets and all), and each profile's row is the one it gets alone."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import FeatureConfig
from propensity.features.build import build_registry
from propensity.features.build.kernels import Packed, Scaled, window_kernel
from propensity.features.build.sql_compiler import day_number

FS = build_registry(FeatureConfig(categories=["yoga", "running"]))
LAST = day_number(dt.date(2025, 6, 1))
AS_OF_DAYS = [LAST - 200, LAST - 30, LAST]

profile_days = st.lists(
    st.sets(st.integers(min_value=LAST - 700, max_value=LAST + 5), min_size=1, max_size=8),
    min_size=1,
    max_size=40,
)


def _rollup(days_per_profile: list[set[int]], seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rollup rows sorted by (profile, day), every profile's keys two apart (keys need not be
    dense), each measure read as the build reads it: 0/1 counts packed two to an int64
    column, decimal sums scaled, maxima as floats with NULLs (NaN)."""
    rng = np.random.default_rng(seed)
    pk = np.concatenate([np.full(len(d), 2 * p, dtype=np.int64) for p, d in enumerate(days_per_profile)])
    days = np.concatenate([np.array(sorted(d), dtype=np.int64) for d in days_per_profile])
    n = len(pk)
    values: dict = {}
    counts = [m for m in FS.measures.values() if m.sql_type == "INTEGER"]
    for i in range(0, len(counts), 2):
        pair = counts[i : i + 2]
        fields = [rng.integers(0, 4, n) for _ in pair]
        column = sum(f << (15 * j) for j, f in enumerate(fields))
        for j, m in enumerate(pair):
            values[m.name] = Packed(column, 15 * j, 15)
    for m in FS.measures.values():
        if m.name in values:
            continue
        if m.rollup == "max":
            amounts = rng.uniform(0, 100, n)
            amounts[rng.random(n) < 0.4] = np.nan
            values[m.name] = amounts
        elif m.sql_type.upper().startswith("DECIMAL"):
            values[m.name] = Scaled(rng.integers(0, 50_000, n), 2)
        else:
            values[m.name] = rng.integers(0, 5, n).astype(np.float64)
    return pk, days, {m: values[m] for m in FS.measures}


@given(
    days_per_profile=profile_days, seed=st.integers(min_value=0, max_value=2**16), chunks=st.integers(1, 7)
)
@settings(max_examples=40, deadline=None)
def test_the_pass_does_not_depend_on_its_chunks(days_per_profile, seed, chunks):
    pk, days, values = _rollup(days_per_profile, seed)
    whole = window_kernel(pk, days, values, FS, AS_OF_DAYS, chunks=1)
    assert whole.equals(window_kernel(pk, days, values, FS, AS_OF_DAYS, chunks=chunks))
    assert whole.equals(window_kernel(pk, days, values, FS, AS_OF_DAYS))

    # Each profile alone (one profile, one chunk) gives its own rows of the whole.
    alone = []
    for key in np.unique(pk):
        mine = pk == key
        part = {
            m: v._replace(column=v.column[mine]) if isinstance(v, tuple) else v[mine]
            for m, v in values.items()
        }
        alone.append(window_kernel(pk[mine], days[mine], part, FS, AS_OF_DAYS))
    stacked = pa.concat_tables(alone).sort_by([("as_of_day", "ascending"), ("pk", "ascending")])
    assert whole.equals(stacked.cast(whole.schema))
    # One row per profile and date with a rollup row in that date's lookback.
    lookback = FS.lookback_days
    expected = [
        (as_of, 2 * p)
        for as_of in AS_OF_DAYS
        for p, d in enumerate(days_per_profile)
        if any(as_of - lookback <= day < as_of for day in d)
    ]
    assert list(zip(whole["as_of_day"].to_pylist(), whole["pk"].to_pylist(), strict=True)) == expected
