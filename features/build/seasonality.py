"""Season: as-of features that tell a model the time of year.

Every profile of a snapshot shares them, so they say nothing about who acts; they let a model
learn how the outcome's rate moves with the calendar (a November upsell model trained on
October's rates over-predicted by a third on the simulated data). Plain SQL over ``as_of_day``
(days since 1970-01-01), valid in DuckDB and Spark SQL:

* ``day_of_year_sin`` / ``day_of_year_cos``: the position in the year on a circle, so that
  31 December and 1 January are neighbours;
* ``days_from_<peak>``: days between the as-of date and the nearest occurrence of a configured
  yearly peak (``features.season_peaks``, e.g. Black Friday, Christmas), before or after it,
  within a day (see below).

Why the nearest occurrence and not the next one: trees do not extrapolate, they carry the
nearest training value's level flat beyond it. With one year of history the newest labelled
snapshots lie just before the peak season and the date scored lies inside it. Days *to the next*
peak jump from 0 to 364 at the peak, so a date five days after Black Friday read 360 days, the
value of the summer snapshots, and the demo's December upsell model predicted July's rates
(mean 0.144 where 0.204 happened). Days *from* the peak are small on both sides of it: the
date scored sits beside the newest pre-peak snapshot, whose level the model then carries
(mean 0.178).

The year is taken as 365.2425 days from 1970-01-01: a date's position is within a day of the
calendar's for a century either side, which is finer than a movable feast such as Black Friday.
"""

from __future__ import annotations

import datetime as dt

from propensity.features.build.feature_set import Feature

YEAR_DAYS = 365.2425
FAMILY = "season"


def _within_year(expression: str) -> str:
    """``expression`` (days) reduced to [0, YEAR_DAYS): a floor-based modulo both engines run."""
    return f"(({expression}) - {YEAR_DAYS} * floor(({expression}) / {YEAR_DAYS}))"


def peak_day_of_year(month_day: str) -> int:
    """Days from 1 January to ``MM-DD`` in a common year (29 February: as 1 March)."""
    month, day = (int(part) for part in month_day.split("-"))
    if (month, day) == (2, 29):
        month, day = 3, 1
    return (dt.date(2001, month, day) - dt.date(2001, 1, 1)).days


def season_features(peaks: dict[str, str]) -> list[Feature]:
    """The day of year on a circle and the days from each of ``peaks`` (name -> ``MM-DD``):
    to its nearest occurrence, before or after the as-of date, in [0, YEAR_DAYS / 2]."""
    phase = _within_year("CAST(as_of_day AS DOUBLE)")
    angle = f"2 * pi() * {phase} / {YEAR_DAYS}"
    out = [
        Feature("day_of_year_sin", "Time of year (sine of the day of year)", FAMILY, f"sin({angle})"),
        Feature("day_of_year_cos", "Time of year (cosine of the day of year)", FAMILY, f"cos({angle})"),
    ]
    for name, month_day in peaks.items():
        until = _within_year(f"{peak_day_of_year(month_day)} - {phase}")  # to the next one
        nearest = f"least({until}, {YEAR_DAYS} - {until})"  # or since the last one
        label = f"Days from the nearest {name.replace('_', ' ')} ({month_day}), before or after it"
        out.append(Feature(f"days_from_{name}", label, FAMILY, f"round({nearest}, 1)"))
    return out


def retired_season_features(peaks: dict[str, str], used: list[str]) -> list[Feature]:
    """The season features new models no longer train on, for a model registered before they
    were retired that uses them (``used``: its feature names): ``days_to_<peak>``, days to the
    next occurrence, which ``days_from_<peak>`` replaced. Scoring such a model builds them as it
    was trained; nothing else does (not the registry, the feature table or a new model)."""
    phase = _within_year("CAST(as_of_day AS DOUBLE)")
    out = []
    for name, month_day in peaks.items():
        if f"days_to_{name}" in used:
            until = _within_year(f"{peak_day_of_year(month_day)} - {phase}")
            label = f"Days to the next {name.replace('_', ' ')} ({month_day})"
            out.append(Feature(f"days_to_{name}", label, FAMILY, f"round({until}, 1)"))
    return out
