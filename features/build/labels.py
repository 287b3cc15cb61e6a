"""Outcome labels and eligible populations, from a model config.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``: an event at exactly
``as_of`` (midnight UTC) counts for the label and never for the features, which end just
before it. ``occurs: false`` (churn) inverts the label: 1 when the event does NOT happen.
"""

from __future__ import annotations

import datetime as dt
import re

from propensity.core.config import ModelConfig, OutcomeConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.rules import Rule, parse_rule
from propensity.features.build.sql_compiler import DUCKDB, Dialect, snapshot_sql
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.identity.as_of import IdentityGraph
from propensity.features.sql import sql_string


def snapshot_dates(cutoff: dt.date, horizon_days: int, count: int, spacing_days: int) -> list[dt.date]:
    """``count`` as-of dates, ``spacing_days`` apart, the latest with its horizon ending by ``cutoff``.

    Oldest first. ``cutoff`` is exclusive: the day after the last complete day of data.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    return [latest - dt.timedelta(days=spacing_days * i) for i in reversed(range(count))]


def horizon_passed(as_of: dt.date, horizon_days: int, cutoff: dt.date) -> bool:
    """True when ``[as_of, as_of + horizon)`` ends by ``cutoff`` (the day after the data)."""
    return as_of + dt.timedelta(days=horizon_days) <= cutoff


def population_rule(model: ModelConfig, fs: FeatureSet) -> Rule:
    """The model's population, checked against the feature names it may use."""
    return parse_rule(
        model.population, fs.names(model_features_only=False), f"model '{model.name}': population"
    )


def outcome_filter(outcome: OutcomeConfig, alias: str = "e") -> str:
    """SQL condition over events aliased ``alias`` that match the outcome's event."""
    conditions = [f"{alias}.event_type = {sql_string(outcome.event_type)}"]
    if outcome.category:
        conditions.append(f"{alias}.product_category = {sql_string(outcome.category.lower())}")
    if outcome.min_revenue is not None:
        conditions.append(f"{alias}.revenue >= {float(outcome.min_revenue)}")
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
    (:meth:`features.identity_as_of.IdentityGraph.outcomes_sql`); without it, each event of
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
        SELECT e.profile_id, s.as_of, max(e.revenue) AS max_revenue
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


def population_snapshot_sql(
    fs: FeatureSet,
    model: ModelConfig,
    as_of: dt.date,
    con,
    cutoff: dt.date,
    graph: IdentityGraph | None = None,
) -> tuple[str, bool]:
    """The model's population at ``as_of`` with its features, and ``label`` when the horizon
    has passed by ``cutoff``: (SQL, labelled). What scoring, evaluation and ``features`` read.

    With ``graph``, profiles are those of the identity graph at ``as_of``, for the features,
    the population and the labels alike (:mod:`features.identity_as_of`).
    """
    where = population_rule(model, fs).sql("duckdb", column_prefix="f")
    sources = graph.sources(as_of) if graph is not None else None
    sql = snapshot_sql(
        fs,
        as_of,
        con,
        where=where,
        events=sources.events if sources else "events",
        profiles=sources.profiles if sources else "profiles",
    )
    if not horizon_passed(as_of, model.outcome.horizon_days, cutoff):
        return sql, False
    usual = order_value_feature(fs) if model.outcome.above_average_order_value else "average_order_value_365d"
    outcomes = (
        graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, [as_of], graph.events)
        if graph is not None
        else None
    )
    return labelled_sql(sql, model.outcome, usual_order_value=usual, outcomes=outcomes), True


def training_frame(
    con, fs: FeatureSet, model: ModelConfig, cutoff: dt.date, graph: IdentityGraph | None = None
):
    """Stacked, labelled snapshots of the model's population whose horizons end by ``cutoff``.

    The events before ``cutoff`` are condensed once into a daily rollup; every snapshot
    comes from it (see :func:`features.stacked_build.build_snapshots`). With ``graph``, each
    snapshot's profiles, population and labels are those of the identity graph at its date
    (the few profiles that graph builds differently from the final one are computed apart).
    Returns (frame, dates).
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
            f"model '{model.name}': {len(dates)} snapshots "
            f"{model.training.snapshots.spacing_days} days apart "
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
    reattributed = graph.reattributed(dates, "events_seen", fs.lookback_days) if graph is not None else None
    build_snapshots(
        con,
        fs,
        dates,
        table="snapshot_features",
        events="events_seen",
        where=population,
        reattributed=reattributed,
    )
    usual = order_value_feature(fs) if model.outcome.above_average_order_value else "average_order_value_365d"
    outcomes = (
        graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, dates, "events_seen")
        if graph is not None
        else None
    )
    sql = labelled_sql(
        "SELECT * FROM snapshot_features",
        model.outcome,
        events="events_seen",
        usual_order_value=usual,
        outcomes=outcomes,
    )
    frame = con.execute(sql).df()
    return frame, dates
