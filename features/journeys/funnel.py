"""Funnel figures: which profiles (or sessions) got how far through ordered steps, and where the
rest went. The query is :mod:`.funnel_sql`'s.

**The figures.** Per step: entrants (units that reached it), units still in progress (they
reached the step before, and a chain of theirs can still advance: its window and step limit
are open at the end of the data, and in session mode the session too; they have not failed
yet and are counted apart), fallout (the rest), conversion from the previous and from the
first step among units that had their chance, with Wilson 95 % intervals, and the median and
90th percentile time from reaching the previous step to reaching this one (each at its
earliest). Units that fell out are followed to their next event (type and channel).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.errors import UserError
from propensity.features.journeys.engine import Runner
from propensity.features.journeys.funnel_sql import MICROS, FunnelSpec, funnel_units_sql


def wilson(successes: np.ndarray, trials: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (NaN where there are no trials)."""
    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


@dataclass
class FunnelUnits:
    """The units of a funnel as arrays: first time at each step (micros, -1 when never), reached
    step (0-based), whether still in progress, and a breakdown value per unit."""

    profile_id: np.ndarray
    times: np.ndarray  # (units, steps) int64, -1 = not reached
    reached: np.ndarray
    in_progress: np.ndarray
    first_channel: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def units_from_arrow(table: pa.Table, spec: FunnelSpec, end: dt.datetime) -> FunnelUnits:
    """The query's rows (:func:`funnel_units_sql`) as :class:`FunnelUnits`, in (profile,
    session) order whatever the engine's row order (sorted by Arrow, not pandas: fast)."""
    import pyarrow.compute as pc

    n = len(spec.steps)
    order = pc.sort_indices(table, sort_keys=[("profile_id", "ascending"), ("session", "ascending")])
    table = table.take(order)

    def ints(name: str, missing: int = -1) -> np.ndarray:
        return table.column(name).fill_null(missing).to_numpy().astype(np.int64)

    times = (
        np.column_stack([ints(f"t_{k}") for k in range(n)]) if table.num_rows else np.zeros((0, n), np.int64)
    )
    reached = (times >= 0).sum(axis=1) - 1
    open_chain = ints("open_chain", 0) == 1
    if spec.session_gap_seconds:
        end_us = int((end - dt.datetime(1970, 1, 1)).total_seconds()) * MICROS
        open_chain &= ints("session_end", 0) > end_us - spec.session_gap_seconds * MICROS
    in_progress = open_chain & (reached < n - 1)
    return FunnelUnits(
        profile_id=table.column("profile_id").to_numpy(zero_copy_only=False).astype(object),
        times=times,
        reached=reached.astype(np.int64),
        in_progress=in_progress,
        first_channel=_labels(table.column("first_channel")),
    )


def _labels(column: pa.ChunkedArray, missing: str = "(none)") -> np.ndarray:
    """A string column as an object array, NULL as ``missing`` (without one Python string
    per row when every value is NULL: a funnel run without the first step's channel)."""
    if column.null_count == len(column):
        return np.full(len(column), missing, dtype=object)
    return column.fill_null(missing).to_numpy(zero_copy_only=False).astype(object)


def summarise(units: FunnelUnits, spec: FunnelSpec, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per step (and group): entrants, in progress, fallout, conversion from the previous and
    first step with Wilson intervals, median and p90 seconds from the previous step."""
    n = len(spec.steps)
    if groups is None:
        names, codes = (["all"] if len(units.reached) else []), np.zeros(len(units.reached), np.int64)
    else:
        codes, uniques = pd.factorize(pd.Series(groups, dtype=object), use_na_sentinel=False)
        names = list(uniques)
    rows = []
    for code in sorted(range(len(names)), key=lambda i: str(names[i])):
        group = names[code]
        # One group: every unit, no copies (the whole funnel over a million units).
        mask = slice(None) if len(names) == 1 else codes == code
        reached, waiting, times = units.reached[mask], units.in_progress[mask], units.times[mask]
        first = len(reached)
        previous = first
        for k in range(n):
            entrants = int((reached >= k).sum())
            # Units stuck just before this step whose chance is not over yet.
            pending = int(((reached == k - 1) & waiting).sum()) if k else 0
            undecided = int(((reached < k) & waiting).sum())
            had_chance_prev, had_chance_first = previous - pending, first - undecided
            if k:
                took = times[reached >= k]
                delta = (took[:, k] - took[:, k - 1]) / MICROS
                median = float(np.median(delta)) if len(delta) else np.nan
                p90 = float(np.quantile(delta, 0.9)) if len(delta) else np.nan
            else:
                median = p90 = np.nan
            rows.append(
                {
                    "group": group,
                    "step": k + 1,
                    "name": spec.steps[k].name,
                    "entrants": entrants,
                    "in_progress": pending,
                    "fallout": previous - entrants - pending if k else 0,
                    "from_previous_units": had_chance_prev,
                    "from_first_units": had_chance_first,
                    "median_seconds": median,
                    "p90_seconds": p90,
                }
            )
            previous = entrants
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for name, units_col in (
        ("conversion_from_previous", "from_previous_units"),
        ("conversion_from_first", "from_first_units"),
    ):
        with np.errstate(divide="ignore", invalid="ignore"):
            frame[name] = frame["entrants"] / frame[units_col].where(frame[units_col] > 0)
        low, high = wilson(frame["entrants"].to_numpy(), frame[units_col].to_numpy())
        frame[f"{name}_low"], frame[f"{name}_high"] = low, high
    return frame.drop(columns=["from_previous_units", "from_first_units"])


def fallen_units(units: FunnelUnits) -> pa.Table:
    """Units that fell out (closed, short of the last step): the step they missed (1-based, the
    next one) and when they reached their last step (micros), for :func:`fallout_next_sql`."""
    n = units.times.shape[1]
    mask = (~units.in_progress) & (units.reached < n - 1)
    reached = units.reached[mask]
    after = units.times[mask][np.arange(mask.sum()), reached]
    return pa.table(
        {
            "profile_id": pa.array(units.profile_id[mask].tolist(), pa.string()),
            "step": pa.array(reached + 2, pa.int64()),
            "after_t": pa.array(after, pa.int64()),
        }
    )


def fallout_destinations(rows: pa.Table, top: int = 5) -> pd.DataFrame:
    """Per missed step, the most frequent next event types and channels of the units that fell
    out before it, with their share (``(no further event)`` when nothing came)."""
    frame = rows.to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=["step", "kind", "next", "units", "share"])
    parts = []
    for kind, column in (("event_type", "next_event"), ("channel", "next_channel")):
        values = frame[column].where(frame["next_event"].notna(), "(no further event)").fillna("(none)")
        counts = (
            pd.DataFrame({"step": frame["step"], "next": values}).value_counts().rename("units").reset_index()
        )
        counts["share"] = counts["units"] / counts.groupby("step")["units"].transform("sum")
        counts = counts.sort_values(["step", "units", "next"], ascending=[True, False, True], kind="stable")
        counts = counts.groupby("step", sort=True).head(top)
        counts.insert(1, "kind", kind)
        parts.append(counts)
    return (
        pd.concat(parts, ignore_index=True)
        .sort_values(["step", "kind"], kind="stable")
        .reset_index(drop=True)
    )


def run_funnel(
    runner: Runner,
    spec: FunnelSpec,
    events: str,
    end: dt.datetime,
    since: dt.datetime | None = None,
    first_channel: bool = True,
) -> FunnelUnits:
    """The funnel's units on one engine (the columns of ``events`` checked first; without
    ``first_channel`` the first step's channel is not looked up: "(none)" for every unit)."""
    columns = runner.columns(events)
    for needed in ("profile_id", "timestamp", "event_type", "channel"):
        if needed not in columns:
            raise UserError(f"funnel: the events have no column '{needed}'")
    sql = funnel_units_sql(spec, events, end, runner.dialect, since, columns, first_channel)
    return units_from_arrow(runner.query(sql), spec, end)
