"""Snapshot dates: which as-of dates a model trains on, and whether a label's horizon is over.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``; ``cutoff`` is always
exclusive: the day after the last complete day of data.
"""

from __future__ import annotations

import datetime as dt

from propensity.core.config import season_before
from propensity.features.contract import ACTIVITY_EVENT_TYPES


def snapshot_dates(
    cutoff: dt.date, horizon_days: int, count: int, spacing_days: int, seasonal: int = 0
) -> list[dt.date]:
    """``count`` as-of dates, ``spacing_days`` apart, the latest with its horizon ending by ``cutoff``,
    and the dates 52 weeks before the newest ``seasonal`` of them (those not already among them).

    Oldest first. ``cutoff`` is exclusive: the day after the last complete day of data.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    dates = [latest - dt.timedelta(days=spacing_days * i) for i in reversed(range(count))]
    return sorted(set(dates) | set(season_before(dates, seasonal)))


def horizon_passed(as_of: dt.date, horizon_days: int, cutoff: dt.date) -> bool:
    """True when ``[as_of, as_of + horizon)`` ends by ``cutoff`` (the day after the data)."""
    return as_of + dt.timedelta(days=horizon_days) <= cutoff


def windows_before_data(windows_days: list[int], first_event: dt.date, as_of: dt.date) -> str | None:
    """A warning when look-back windows at ``as_of`` start before ``first_event`` (the day of the
    first event in the data): such a window silently means "since the start of the data", so a
    365-day count on 120 days of data is a 120-day count. None when every window fits."""
    history = (as_of - first_event).days
    longer = sorted(w for w in set(windows_days) if w > history)
    if not longer:
        return None
    named = ", ".join(f"{w}d" for w in longer)
    plural = "s" if len(longer) > 1 else ""
    return (
        f"window{plural} {named} reach{'' if plural else 'es'} before the first event: at {as_of} the data "
        f"hold {history:,} days (from {first_event}), so {'they count' if plural else 'it counts'} "
        f"only those {history:,} days"
    )


def history_event_types(outcome_event_type: str) -> list[str]:
    """The event types whose history a snapshot needs: those with their own activity features
    and the outcome's. A campaign mailing of a custom type before the first basket is not
    purchase history."""
    types = list(ACTIVITY_EVENT_TYPES)
    return types if outcome_event_type in types else [*types, outcome_event_type]
