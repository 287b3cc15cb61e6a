"""The funnel job's pieces (:func:`propensity.pipeline.jobs.journeys.run_funnel` puts them
together): the funnel asked on the command line, breakdowns (which group each unit belongs to:
the first step's channel, a profile attribute at as_of, or a column of any Parquet keyed by
``profile_id``) with the figures per group beside the whole, where fallen units went next,
the unit table and the page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.errors import UserError
from propensity.features.journeys import Runner, funnel_sql, parse_duration, parse_exclusion, parse_steps
from propensity.features.journeys import funnel as funnel_mod
from propensity.features.journeys.funnel_sql import FunnelSpec
from propensity.pipeline.jobs import journey_report as report


def breakdown(
    runner: Runner, profiles: str, units: funnel_mod.FunnelUnits, by: str | None
) -> pd.DataFrame | None:
    """(unit index, group) pairs: by the first step's channel, a profile attribute at as_of, or
    ``PATH:COLUMN`` of any Parquet keyed by ``profile_id`` (a score partition's ``bucket``, a
    memberships file's ``segment``); a unit in several rows of the file is in each group."""
    if by is None:
        return None
    index = np.arange(len(units.profile_id))
    if by == "channel":
        return pd.DataFrame({"unit": index, "group": units.first_channel})
    mapping, column = _groups(runner, profiles, by)
    mapping = mapping.rename(columns={column: "group"})
    mapping["group"] = mapping["group"].astype(object).where(mapping["group"].notna(), "(none)").astype(str)
    joined = pd.DataFrame({"unit": index, "profile_id": units.profile_id}).merge(
        mapping, on="profile_id", how="left"
    )
    joined["group"] = joined["group"].fillna("(none)")
    return joined[["unit", "group"]]


def summarise_groups(
    units: funnel_mod.FunnelUnits, spec: FunnelSpec, pairs: pd.DataFrame | None
) -> pd.DataFrame:
    """The funnel figures of every unit (group ``all``), then of each breakdown group."""
    whole = funnel_mod.summarise(units, spec)
    if pairs is None:
        return whole
    picked = pairs["unit"].to_numpy()
    expanded = funnel_mod.FunnelUnits(
        profile_id=units.profile_id[picked],
        times=units.times[picked],
        reached=units.reached[picked],
        in_progress=units.in_progress[picked],
        first_channel=units.first_channel[picked],
    )
    grouped = funnel_mod.summarise(expanded, spec, pairs["group"].to_numpy(dtype=object))
    return pd.concat([whole, grouped], ignore_index=True)


def _groups(runner: Runner, profiles: str, by: str) -> tuple[pd.DataFrame, str]:
    """(profile_id, column) rows of ``PATH:COLUMN`` or of the profile attribute ``by``."""
    if ":" in by and not by.startswith("trait:"):
        path, column = by.rsplit(":", 1)
        source = Path(path)
        files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
        if not files or not all(f.is_file() for f in files):
            raise UserError(f"--by {by}: no Parquet file at {path}")
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        if "profile_id" not in frame or column not in frame:
            raise UserError(f"--by {by}: {path} needs the columns profile_id and {column}")
        mapping = frame[["profile_id", column]].drop_duplicates()
    else:
        column = by.removeprefix("trait:")
        columns = runner.columns(profiles)
        if column not in columns:
            raise UserError(
                f"--by {by}: the profiles have no attribute '{column}' "
                f"(they have {', '.join(sorted(columns))})"
            )
        q = runner.dialect.ident
        mapping = runner.query(f"SELECT profile_id, {q(column)} FROM {profiles}").to_pandas()
    return mapping, column


def funnel_spec(
    steps: str, window: str, mode: str, exclude: list[str] | None, session_gap: str | None
) -> funnel_sql.FunnelSpec:
    """The funnel asked on the command line."""
    parsed = parse_steps(steps)
    return funnel_sql.FunnelSpec(
        tuple(parsed),
        parse_duration(window, "--window"),
        mode,
        tuple(parse_exclusion(x, len(parsed)) for x in exclude or []),
        parse_duration(session_gap, "--session-gap") if session_gap else None,
    )


def funnel_page(table: pd.DataFrame, fallout: pd.DataFrame, facts: dict[str, Any]) -> str:
    """The funnel's HTML page."""
    date, session_gap = facts["as_of"], facts["session_gap"]
    section = report.funnel_section(
        table,
        fallout,
        "Funnel",
        f"{' > '.join(facts['steps'])}; window {facts['window']}, {facts['mode']} order"
        + (f", per session (gap {session_gap})" if session_gap else ", per profile")
        + f"; events before {date}. Rates count only units that had their chance; "
        "in-progress units are apart.",
    )
    return report.page("Journeys: funnel", f"as of {date}", [section])


def fallout_next(
    runner: Runner, events: str, end: dt.datetime, units: funnel_mod.FunnelUnits
) -> pd.DataFrame:
    """Where the units that fell out went next."""
    runner.register("journey_fallen", funnel_mod.fallen_units(units))
    rows = runner.query(funnel_sql.fallout_next_sql("journey_fallen", events, end, runner.dialect))
    return funnel_mod.fallout_destinations(rows)


def unit_table(units: funnel_mod.FunnelUnits) -> pd.DataFrame:
    """One row per funnel unit: how far it got."""
    return pd.DataFrame(
        {
            "profile_id": units.profile_id,
            "reached_step": units.reached + 1,
            "in_progress": units.in_progress,
            "first_channel": units.first_channel,
        }
    )
