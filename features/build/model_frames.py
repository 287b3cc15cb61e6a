"""The frames a model reads, written once for both engines: its population at one as-of date
with features (and ``label`` once the horizon has passed), the stacked, labelled training
snapshots, and the labels' SQL.

A label at ``as_of`` looks at ``[as_of, as_of + horizon_days)``: an event at exactly ``as_of``
(midnight UTC) counts for the label and never for the features, which end just before it.
``occurs: false`` (churn) inverts the label: 1 when the event does NOT happen.

The dates come from :mod:`.snapshots`, who is in from :mod:`.population`, the outcomes'
attribution from the events' identity graph. What differs by engine is asked of the loaded
events (:class:`FrameSource`): DuckDB stacks the snapshots with the hand-tuned
:mod:`.stacked_build`, Spark one date at a time on the cluster.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol

from propensity.core.config import ModelConfig, OutcomeConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.population import population_rule
from propensity.features.build.snapshots import horizon_passed, snapshot_dates
from propensity.features.sql import DUCKDB, Dialect, sql_string


class FrameSource(Protocol):
    """What the model frames ask of events loaded on an engine (a relation is DuckDB SQL text
    or a Spark DataFrame)."""

    dialect: Dialect
    graph: Any  # the identity graph seen as of dates (None: each event's own profile_id)

    def rows(self, sql: str) -> list[tuple]: ...
    def snapshot(self, fs: FeatureSet, as_of: dt.date, where: str | None = None) -> Any: ...
    def as_query(self, relation: Any, name: str) -> str: ...
    def query(self, sql: str) -> Any: ...
    def stack_snapshots(
        self, fs: FeatureSet, dates: list[dt.date], where: str, events: str, events_sql: str
    ) -> str: ...


def _outcomes(events: FrameSource, model: ModelConfig, dates: list[dt.date], source: str) -> str | None:
    """Outcome events attributed through the identity graph at each date (None: no graph)."""
    if events.graph is None:
        return None
    return events.graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, dates, source)


def population_snapshot(
    events: FrameSource, fs: FeatureSet, model: ModelConfig, as_of: dt.date, cutoff: dt.date
) -> tuple[Any, bool]:
    """The model's population at ``as_of`` with its features, and ``label`` when the horizon
    has passed by ``cutoff``: (relation, labelled). What scoring, evaluation and ``features`` read.

    Profiles are those of the identity graph at ``as_of``, for the features, the population and
    the labels alike (:mod:`propensity.features.identity.as_of`).
    """
    where = population_rule(model, fs).sql(events.dialect.name, column_prefix="f")
    features = events.snapshot(fs, as_of, where=where)
    if not horizon_passed(as_of, model.outcome.horizon_days, cutoff):
        return features, False
    sql = labelled_sql(
        events.as_query(features, "population_features"),
        model.outcome,
        events.dialect,
        usual_order_value=order_value_to_beat(fs, model.outcome),
        outcomes=_outcomes(events, model, [as_of], "events"),
    )
    return events.query(sql), True


def training_frame(
    events: FrameSource, fs: FeatureSet, model: ModelConfig, cutoff: dt.date
) -> tuple[Any, list[dt.date]]:
    """Stacked, labelled snapshots of the model's population whose horizons end by ``cutoff``:
    (relation, dates, oldest first).

    Each snapshot's profiles, population and labels are those of the identity graph at its
    date. Nothing at or after the cutoff is seen: not by features, not by labels.
    """
    dates = snapshot_dates(
        cutoff,
        model.outcome.horizon_days,
        model.training.snapshots.count,
        model.training.snapshots.spacing_days,
        model.training.snapshots.seasonal,
    )
    check_history(events.rows("SELECT min(timestamp) FROM events")[0][0], model, dates)
    # Only the population is kept: the rest of each snapshot is never stored.
    population = population_rule(model, fs).sql(events.dialect.name, column_prefix="f")
    seen = f"SELECT * FROM events WHERE timestamp < TIMESTAMP '{cutoff} 00:00:00'"
    stacked = events.stack_snapshots(fs, dates, population, "events_seen", seen)
    sql = labelled_sql(
        f"SELECT * FROM {stacked}",
        model.outcome,
        events.dialect,
        events="events_seen",
        usual_order_value=order_value_to_beat(fs, model.outcome),
        outcomes=_outcomes(events, model, dates, "events_seen"),
    )
    return events.query(sql), dates


def check_history(first: dt.datetime | None, model: ModelConfig, dates: list[dt.date]) -> None:
    """Refuse snapshots older than the events (``first``: the first event's time): their
    features would read no history."""
    if first is None or dates[0] <= first.date():
        raise UserError(
            f"model '{model.name}': {len(dates)} snapshots "
            f"{model.training.snapshots.spacing_days} days apart "
            f"with a {model.outcome.horizon_days}-day horizon need data from before {dates[0]}, "
            f"but the events start on {first.date() if first else 'never'}; lower training.snapshots.count "
            f"or spacing_days"
        )


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
