"""The DuckDB frames a model reads: its population at one as-of date with features (and
``label`` once the horizon has passed), and the stacked, labelled training snapshots.

The dates come from :mod:`.snapshots`, who is in from :mod:`.population`, the labels' SQL from
:mod:`.labels`; the Spark wing builds the same frames in :mod:`propensity.features.spark.features`.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.labels import labelled_sql, order_value_to_beat, outcome_filter
from propensity.features.build.population import population_rule
from propensity.features.build.snapshots import horizon_passed, snapshot_dates
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.identity.as_of import IdentityGraph


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
    the population and the labels alike (:mod:`propensity.features.identity.as_of`).
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
    usual = order_value_to_beat(fs, model.outcome)
    outcomes = (
        graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, [as_of], graph.events)
        if graph is not None
        else None
    )
    return labelled_sql(sql, model.outcome, usual_order_value=usual, outcomes=outcomes), True


def training_frame(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    model: ModelConfig,
    cutoff: dt.date,
    graph: IdentityGraph | None = None,
) -> tuple[pd.DataFrame, list[dt.date]]:
    """Stacked, labelled snapshots of the model's population whose horizons end by ``cutoff``.

    The events before ``cutoff`` are condensed once into a daily rollup; every snapshot
    comes from it (see :func:`propensity.features.build.stacked_build.build_snapshots`). With
    ``graph``, each snapshot's profiles, population and labels are those of the identity graph
    at its date (the few profiles that graph builds differently from the final one are
    computed apart). Returns (frame, dates).
    """
    dates = snapshot_dates(
        cutoff,
        model.outcome.horizon_days,
        model.training.snapshots.count,
        model.training.snapshots.spacing_days,
    )
    check_history(con, model, dates)
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
    outcomes = (
        graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, dates, "events_seen")
        if graph is not None
        else None
    )
    sql = labelled_sql(
        "SELECT * FROM snapshot_features",
        model.outcome,
        events="events_seen",
        usual_order_value=order_value_to_beat(fs, model.outcome),
        outcomes=outcomes,
    )
    frame = con.execute(sql).df()
    return frame, dates


def check_history(con: duckdb.DuckDBPyConnection, model: ModelConfig, dates: list[dt.date]) -> None:
    """Refuse snapshots older than the events: their features would read no history."""
    first = con.execute("SELECT min(timestamp) FROM events").fetchone()[0]
    if first is None or dates[0] <= first.date():
        raise UserError(
            f"model '{model.name}': {len(dates)} snapshots "
            f"{model.training.snapshots.spacing_days} days apart "
            f"with a {model.outcome.horizon_days}-day horizon need data from before {dates[0]}, "
            f"but the events start on {first.date() if first else 'never'}; lower training.snapshots.count "
            f"or spacing_days"
        )
