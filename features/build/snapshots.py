"""Snapshot dates: which as-of dates a model trains on, and whether a label's horizon is over.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``; ``cutoff`` is always
exclusive: the day after the last complete day of data.
"""

from __future__ import annotations

import datetime as dt

from propensity.features.contract import ACTIVITY_EVENT_TYPES


def snapshot_dates(cutoff: dt.date, horizon_days: int, count: int, spacing_days: int) -> list[dt.date]:
    """``count`` as-of dates, ``spacing_days`` apart, the latest with its horizon ending by ``cutoff``.

    Oldest first. ``cutoff`` is exclusive: the day after the last complete day of data.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    return [latest - dt.timedelta(days=spacing_days * i) for i in reversed(range(count))]


def horizon_passed(as_of: dt.date, horizon_days: int, cutoff: dt.date) -> bool:
    """True when ``[as_of, as_of + horizon)`` ends by ``cutoff`` (the day after the data)."""
    return as_of + dt.timedelta(days=horizon_days) <= cutoff


def history_event_types(outcome_event_type: str) -> list[str]:
    """The event types whose history a snapshot needs: those with their own activity features
    and the outcome's. A campaign mailing of a custom type before the first basket is not
    purchase history."""
    types = list(ACTIVITY_EVENT_TYPES)
    return types if outcome_event_type in types else [*types, outcome_event_type]
