"""Outcome labels from a model config, as SQL for either engine.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``: an event at exactly
``as_of`` (midnight UTC) counts for the label and never for the features, which end just
before it. ``occurs: false`` (churn) inverts the label: 1 when the event does NOT happen.
"""

from __future__ import annotations

import datetime as dt
import re

from propensity.core.config import OutcomeConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.sql import DUCKDB, Dialect, sql_string


def outcome_filter(outcome: OutcomeConfig, alias: str = "e") -> str:
    """SQL condition over events aliased ``alias`` that match the outcome's event."""
    conditions = [f"{alias}.event_type = {sql_string(outcome.event_type)}"]
    if outcome.category:
        conditions.append(f"{alias}.product_category = {sql_string(outcome.category.lower())}")
    if outcome.min_revenue is not None:
        # A purchase line counts with its order's value (features.identity.orders).
        conditions.append(f"coalesce({alias}.order_revenue, {alias}.revenue) >= {float(outcome.min_revenue)}")
    return " AND ".join(conditions)


def order_value_feature(fs: FeatureSet) -> str:
    """The profile's usual order value for upsell outcomes: average order value over the
    longest configured window (365 days with the default windows)."""
    names = set(fs.names())
    windows = sorted(
        (int(n.removeprefix("average_order_value_").removesuffix("d")), n)
        for n in names
        if re.fullmatch(r"average_order_value_\d+d", n)
    )
    if not windows:
        raise UserError(
            "outcome.above_average_order_value needs an average order value feature; "
            "features.windows_days has no window it can use"
        )
    return windows[-1][1]


def order_value_to_beat(fs: FeatureSet, outcome: OutcomeConfig) -> str:
    """The feature an upsell order must exceed (:func:`order_value_feature` when the outcome
    asks for it; the 365-day average otherwise, which the label then does not read)."""
    return order_value_feature(fs) if outcome.above_average_order_value else "average_order_value_365d"


def labelled_sql(
    features_sql: str,
    outcome: OutcomeConfig,
    dialect: Dialect = DUCKDB,
    events: str = "events",
    usual_order_value: str = "average_order_value_365d",
    outcomes: str | None = None,
) -> str:
    """Add ``label`` (0/1) to a feature query whose snapshots' horizons have all passed.

    ``usual_order_value`` names the feature an upsell order must exceed
    (:func:`order_value_feature`). ``outcomes``: SQL of the outcome events per (profile_id,
    as_of) with ``max_revenue``, attributed through the identity graph at each as_of
    (:meth:`features.identity.as_of.IdentityGraph.outcomes_sql`); without it, each event of
    ``events`` counts for its own ``profile_id``.
    """
    if outcome.above_average_order_value and outcome.event_type != "purchase":
        raise UserError("outcome.above_average_order_value only applies to event_type 'purchase'")
    event_day, as_of_day = dialect.day("e.timestamp"), dialect.day("s.as_of")
    hit = "h.profile_id IS NOT NULL"
    if outcome.above_average_order_value:
        usual = f"feats.{dialect.ident(usual_order_value)}"
        # No earlier order to compare with: any purchase is above "usual".
        hit = f"h.profile_id IS NOT NULL AND ({usual} IS NULL OR h.max_revenue > {usual})"
    label = f"CASE WHEN {hit} THEN 1 ELSE 0 END" if outcome.occurs else f"CASE WHEN {hit} THEN 0 ELSE 1 END"
    own_profile = f"""
        SELECT e.profile_id, s.as_of, max(coalesce(e.order_revenue, e.revenue)) AS max_revenue
        FROM {events} e
        JOIN (SELECT DISTINCT as_of FROM feats) s
          ON {event_day} >= {as_of_day} AND {event_day} < {as_of_day} + {int(outcome.horizon_days)}
        WHERE {outcome_filter(outcome)}
        GROUP BY e.profile_id, s.as_of
    """
    return f"""
        WITH feats AS ({features_sql}),
        hits AS ({outcomes or own_profile})
        SELECT feats.*, {label} AS label
        FROM feats LEFT JOIN hits h ON h.profile_id = feats.profile_id AND h.as_of = feats.as_of
        ORDER BY feats.as_of, feats.profile_id
    """


def treated_sql(treatment: TreatmentConfig, as_ofs: list[dt.date], events: str = "events") -> str:
    """(profile_id, as_of) of the profiles treated at each ``as_of``: a treatment event (of the
    campaign, when one is named) in the ``window_days`` before ``as_of`` or on its day. DuckDB SQL
    (Spark transpiles it). Each event counts for its own ``profile_id`` (the stitched one). A
    treatment by a past export's arm (``treatment.segment``) is read from the memberships instead."""
    if treatment.event_type is None:
        raise ValueError("treated_sql needs a treatment event_type")
    conditions = [f"e.event_type = {sql_string(treatment.event_type)}"]
    if treatment.campaign is not None:
        conditions.append(f"e.campaign = {sql_string(treatment.campaign)}")
    days = ", ".join(f"(DATE '{d}')" for d in sorted(set(as_ofs)))
    event_day, as_of_day = DUCKDB.day("e.timestamp"), DUCKDB.day("s.as_of")
    return f"""
        SELECT DISTINCT e.profile_id, s.as_of
        FROM {events} e
        JOIN (VALUES {days}) AS s(as_of)
          ON {event_day} <= {as_of_day} AND {event_day} > {as_of_day} - {int(treatment.window_days)}
        WHERE {" AND ".join(conditions)}
        ORDER BY s.as_of, e.profile_id
    """
