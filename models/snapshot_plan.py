"""How many training snapshots, how far apart: the configured plan, adapted to short data.

A snapshot needs its horizon to have passed by the cutoff and some history before it; data
that spans only a few horizons cannot hold ``count`` snapshots ``spacing_days`` apart. Rather
than fail, the spacing shrinks first (down to ``min_spacing_days``: snapshots closer than a
week mostly repeat the same rows), then the count (down to the 3 a split needs).
"""

from __future__ import annotations

import datetime as dt

from propensity.core.config import SnapshotConfig
from propensity.core.errors import UserError


def adapt_snapshots(
    snapshots: SnapshotConfig, first_event: dt.date, cutoff: dt.date, horizon_days: int, model_name: str
) -> tuple[SnapshotConfig, str | None]:
    """The plan to use and, when it differs from the configured one, a sentence saying why.

    The latest snapshot is ``cutoff - horizon_days``; the earliest may not come before
    ``first_event + min_history_days``. Raises a UserError when not even 3 snapshots a day
    apart fit.
    """
    if not snapshots.adapt:
        return snapshots, None
    latest = cutoff - dt.timedelta(days=horizon_days)
    span = (latest - (first_event + dt.timedelta(days=snapshots.min_history_days))).days
    if (snapshots.count - 1) * snapshots.spacing_days <= span:
        return snapshots, None
    if span < 2:
        raise UserError(
            f"model '{model_name}': the events ({first_event} .. {cutoff - dt.timedelta(days=1)}) are too "
            f"short for 3 training snapshots with a {horizon_days}-day horizon and "
            f"{snapshots.min_history_days} days of history before the first; use more data, a shorter "
            f"outcome.horizon_days or a lower training.snapshots.min_history_days"
        )
    count, spacing = snapshots.count, span // (snapshots.count - 1)
    if spacing < snapshots.min_spacing_days:
        spacing = min(snapshots.min_spacing_days, span // 2)
        count = max(3, min(snapshots.count, span // spacing + 1))
    adapted = snapshots.model_copy(update={"count": count, "spacing_days": spacing})
    note = (
        f"{snapshots.count} snapshots {snapshots.spacing_days} days apart do not fit in the "
        f"{span} days between {first_event} + {snapshots.min_history_days} days of history and "
        f"{latest}; using {count} snapshots {spacing} days apart"
    )
    return adapted, note
