"""Outcome labels and eligible populations, from a model config.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``: an event at exactly
``as_of`` (midnight UTC) counts for the label and never for the features, which end just
before it. ``occurs: false`` (churn) inverts the label: 1 when the event does NOT happen.
"""

from __future__ import annotations

import datetime as dt

from propensity.core.config import ModelConfig, OutcomeConfig
from propensity.core.errors import UserError
from propensity.features.builders import DUCKDB, Dialect, build_snapshots
from propensity.features.engine import sql_string
from propensity.features.registry import FeatureSet
from propensity.features.rules import Rule, parse_rule


def snapshot_dates(cutoff: dt.date, horizon_days: int, count: int, spacing_days: int) -> list[dt.date]:
    """``count`` as-of dates, ``spacing_days`` apart, the latest with its horizon ending by ``cutoff``.

    Oldest first. ``cutoff`` is exclusive: the day after the last complete day of data.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    return [latest - dt.timedelta(days=spacing_days * i) for i in reversed(range(count))]


def horizon_passed(as_of: dt.date, horizon_days: int, cutoff: dt.date) -> bool:
    return as_of + dt.timedelta(days=horizon_days) <= cutoff


def population_rule(model: ModelConfig, fs: FeatureSet) -> Rule:
    """The model's population, checked against the feature names it may use."""
    return parse_rule(
        model.population, fs.names(model_features_only=False), f"model '{model.name}': population"
    )


def outcome_filter(outcome: OutcomeConfig, alias: str = "e") -> str:
    conditions = [f"{alias}.event_type = {sql_string(outcome.event_type)}"]
    if outcome.category:
        conditions.append(f"{alias}.product_category = {sql_string(outcome.category.lower())}")
    if outcome.min_revenue is not None:
        conditions.append(f"{alias}.revenue >= {float(outcome.min_revenue)}")
    return " AND ".join(conditions)


def labelled_sql(
    features_sql: str, outcome: OutcomeConfig, dialect: Dialect = DUCKDB, events: str = "events"
) -> str:
    """Add ``label`` (0/1) to a feature query whose snapshots' horizons have all passed."""
    if outcome.above_average_order_value and outcome.event_type != "purchase":
        raise UserError("outcome.above_average_order_value only applies to event_type 'purchase'")
    event_day, as_of_day = dialect.day("e.timestamp"), dialect.day("s.as_of")
    hit = "h.profile_id IS NOT NULL"
    if outcome.above_average_order_value:
        # No earlier order to compare with: any purchase is above "usual".
        hit = (
            "h.profile_id IS NOT NULL AND (feats.average_order_value_365d IS NULL "
            "OR h.max_revenue > feats.average_order_value_365d)"
        )
    label = f"CASE WHEN {hit} THEN 1 ELSE 0 END" if outcome.occurs else f"CASE WHEN {hit} THEN 0 ELSE 1 END"
    return f"""
        WITH feats AS ({features_sql}),
        hits AS (
            SELECT e.profile_id, s.as_of, max(e.revenue) AS max_revenue
            FROM {events} e
            JOIN (SELECT DISTINCT as_of FROM feats) s
              ON {event_day} >= {as_of_day} AND {event_day} < {as_of_day} + {int(outcome.horizon_days)}
            WHERE {outcome_filter(outcome)}
            GROUP BY e.profile_id, s.as_of
        )
        SELECT feats.*, {label} AS label
        FROM feats LEFT JOIN hits h ON h.profile_id = feats.profile_id AND h.as_of = feats.as_of
        ORDER BY feats.as_of, feats.profile_id
    """


def training_frame(con, fs: FeatureSet, model: ModelConfig, cutoff: dt.date):
    """Stacked, labelled snapshots of the model's population whose horizons end by ``cutoff``.

    The events before ``cutoff`` are condensed once into a daily rollup; every snapshot
    comes from it (see :func:`features.builders.build_snapshots`). Returns (frame, dates).
    """
    dates = snapshot_dates(
        cutoff,
        model.outcome.horizon_days,
        model.training.snapshots.count,
        model.training.snapshots.spacing_days,
    )
    first = con.execute("SELECT min(timestamp) FROM events").fetchone()[0]
    if first is None or dates[0] <= first.date():
        raise UserError(
            f"model '{model.name}': {len(dates)} snapshots {model.training.snapshots.spacing_days} days apart "
            f"with a {model.outcome.horizon_days}-day horizon need data from before {dates[0]}, "
            f"but the events start on {first.date() if first else 'never'}; lower training.snapshots.count "
            f"or spacing_days"
        )
    # Nothing at or after the cutoff may be seen: not by features, not by labels.
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW events_seen AS SELECT * FROM events "
        f"WHERE timestamp < TIMESTAMP '{cutoff} 00:00:00'"
    )
    # Only the population is kept: the rest of each snapshot is never stored.
    population = population_rule(model, fs).sql("duckdb", column_prefix="f")
    build_snapshots(con, fs, dates, table="snapshot_features", events="events_seen", where=population)
    sql = labelled_sql("SELECT * FROM snapshot_features", model.outcome, events="events_seen")
    frame = con.execute(sql).df()
    return frame, dates
