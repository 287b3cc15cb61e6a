"""The frames a model reads, written once for both engines: its population at one as-of date
with features (and ``label`` once the horizon has passed), and the stacked, labelled training
snapshots.

The dates come from :mod:`.snapshots`, who is in from :mod:`.population`, the labels' SQL from
:mod:`.labels`, the outcomes' attribution from the events' identity graph. What differs by
engine is asked of the loaded events (:class:`FrameSource`): DuckDB stacks the snapshots with
the hand-tuned :mod:`.stacked_build`, Spark one date at a time on the cluster.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.labels import labelled_sql, order_value_to_beat, outcome_filter
from propensity.features.build.population import population_rule
from propensity.features.build.snapshots import horizon_passed, snapshot_dates
from propensity.features.sql import Dialect


class FrameSource(Protocol):
    """What the model frames ask of events loaded on an engine (a relation is DuckDB SQL text
    or a Spark DataFrame)."""

    dialect: Dialect
    graph: Any  # the identity graph seen as of dates (None: each event's own profile_id)

    def rows(self, sql: str) -> list[tuple]: ...
    def snapshot(self, fs: FeatureSet, as_of: dt.date, where: str | None = None) -> Any: ...
    def as_query(self, relation: Any, name: str) -> str: ...
    def create_view(self, name: str, sql: str) -> None: ...
    def query(self, sql: str) -> Any: ...
    def stack_snapshots(self, fs: FeatureSet, dates: list[dt.date], where: str, events: str) -> str: ...


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
    )
    check_history(events.rows("SELECT min(timestamp) FROM events")[0][0], model, dates)
    events.create_view("events_seen", f"SELECT * FROM events WHERE timestamp < TIMESTAMP '{cutoff} 00:00:00'")
    # Only the population is kept: the rest of each snapshot is never stored.
    population = population_rule(model, fs).sql(events.dialect.name, column_prefix="f")
    stacked = events.stack_snapshots(fs, dates, population, "events_seen")
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
