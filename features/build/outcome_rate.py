"""The population's recent outcome rate: an as-of feature that tells a model how often the
outcome has just been happening.

Every profile of a snapshot shares it, like the season features (:mod:`.seasonality`): it says
nothing about who acts, it lets a model follow the outcome's base rate as it drifts (seasonal
drift that one year of data cannot teach through the day of year alone).

At an as-of date ``d`` with a horizon of ``h`` days, the rate is the share of the profiles seen
before ``d - h`` (any event) that had an outcome event in ``[d - h, d)``: the label rate a
snapshot at ``d - h`` would have had, which is known at ``d`` (only events strictly before
``d`` are read). ``occurs: false`` (churn) reports the share that did NOT have one, the label's
rate. Two approximations keep it one engine-neutral query: the population is everyone seen
before the window, not the model's ``population`` rule; an upsell outcome
(``above_average_order_value``) counts any matching purchase, not one above the profile's usual
order value.

The rates come from one query (:func:`outcome_rate_sql`, DuckDB SQL that Spark transpiles) for
the snapshot dates a job needs, then become a feature whose SQL is a ``CASE as_of_day WHEN ...``
over those dates (:func:`outcome_rate_feature`), so the stacked build, single snapshots and
both engines compute it unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import replace

from propensity.core.config import OutcomeConfig
from propensity.features.build.feature_set import Feature, FeatureSet
from propensity.features.build.model_frames import outcome_filter
from propensity.features.build.seasonality import FAMILY as SEASON

NAME = "population_outcome_rate"
FAMILY = "population_rate"
# Families whose value is the as-of date's, shared by every profile: ``monitor`` does not watch
# their drift (a new date is a new value by design).
AS_OF_FAMILIES = (SEASON, FAMILY)
EPOCH = dt.date(1970, 1, 1)


def outcome_rate_sql(outcome: OutcomeConfig, dates: Sequence[dt.date], events: str = "events") -> str:
    """One row per date of ``dates``: ``as_of``, ``seen`` (profiles with an event before the
    window) and ``hits`` (those of them with an outcome event in the window before ``as_of``)."""
    horizon = dt.timedelta(days=int(outcome.horizon_days))
    windows = ", ".join(
        f"(DATE '{d}', TIMESTAMP '{d - horizon} 00:00:00', TIMESTAMP '{d} 00:00:00')"
        for d in sorted(set(dates))
    )
    return f"""
        WITH windows AS (
            SELECT * FROM (VALUES {windows}) AS w(as_of, window_start, window_end)
        ),
        first_seen AS (
            SELECT profile_id, min(timestamp) AS first_seen FROM {events} GROUP BY profile_id
        ),
        hits AS (
            SELECT DISTINCT w.as_of, e.profile_id
            FROM {events} e
            JOIN windows w ON e.timestamp >= w.window_start AND e.timestamp < w.window_end
            WHERE {outcome_filter(outcome)}
        ),
        seen AS (
            SELECT w.as_of, f.profile_id
            FROM windows w JOIN first_seen f ON f.first_seen < w.window_start
        )
        SELECT w.as_of, count(s.profile_id) AS seen, count(h.profile_id) AS hits
        FROM windows w
        LEFT JOIN seen s ON s.as_of = w.as_of
        LEFT JOIN hits h ON h.as_of = s.as_of AND h.profile_id = s.profile_id
        GROUP BY w.as_of
        ORDER BY w.as_of
    """


def outcome_rates(rows: list[tuple], occurs: bool = True) -> dict[dt.date, float | None]:
    """:func:`outcome_rate_sql`'s rows -> as_of -> the label's rate (None: nobody seen before)."""
    out: dict[dt.date, float | None] = {}
    for as_of, seen, hits in rows:
        day = as_of.date() if isinstance(as_of, dt.datetime) else as_of
        rate = hits / seen if seen else None
        out[day] = rate if rate is None or occurs else 1.0 - rate
    return out


def outcome_rate_label(outcome: OutcomeConfig) -> str:
    """The feature's label for people: what was counted, over which window."""
    what = outcome.event_type.replace("_", " ")
    if outcome.category:
        what += f" in {outcome.category}"
    did = "had" if outcome.occurs else "had no"
    return f"Share of earlier-seen profiles who {did} a {what} in the {outcome.horizon_days} days before"


def outcome_rate_feature(rates: dict[dt.date, float | None], outcome: OutcomeConfig) -> Feature:
    """The rate as a feature over ``as_of_day``: NULL on a date it was not computed for."""
    whens = " ".join(
        f"WHEN {(d - EPOCH).days} THEN {rate!r}" for d, rate in sorted(rates.items()) if rate is not None
    )
    sql = f"CAST(CASE as_of_day {whens} END AS DOUBLE)" if whens else "CAST(NULL AS DOUBLE)"
    return Feature(NAME, outcome_rate_label(outcome), FAMILY, sql)


def with_outcome_rate(
    fs: FeatureSet,
    outcome: OutcomeConfig,
    dates: Sequence[dt.date],
    rows: Callable[[str], list[tuple]],
    events: str = "events",
) -> FeatureSet:
    """``fs`` with the outcome-rate feature for ``dates`` appended (``rows`` runs the query on
    the events' engine); the rate depends on the model's outcome, so each model adds its own."""
    rates = outcome_rates(rows(outcome_rate_sql(outcome, dates, events)), outcome.occurs)
    kept = [f for f in fs.features if f.name != NAME]
    return replace(fs, features=[*kept, outcome_rate_feature(rates, outcome)])
