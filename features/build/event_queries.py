"""Small questions asked of the events: where the data ends, which categories matter.

Each is written once, in DuckDB's SQL: it runs on DuckDB as it is and on Spark transpiled by
sqlglot (:func:`propensity.features.spark.features.duckdb_to_spark`), so the engines cannot
drift. :class:`SqlEvents` asks them of events loaded on either engine (the engine seam's
``Events``), with the as-of sources and a model's frames; each wing supplies the primitives.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from propensity.core.config import ModelConfig, OutcomeConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.features.build import model_frames
from propensity.features.build.feature_set import FeatureSet
from propensity.features.contract import CANONICAL_EVENT_TYPES
from propensity.features.identity.as_of import AsOfSources
from propensity.features.sql import DUCKDB, sql_ident, sql_string


def learn_categories_sql(before: dt.date, limit: int, events: str = "events") -> str:
    """The most viewed and bought categories before ``before`` (the training snapshot only)."""
    return f"""
        SELECT product_category FROM {events}
        WHERE timestamp < TIMESTAMP '{before} 00:00:00' AND product_category IS NOT NULL
          AND event_type IN ('product_view', 'purchase', 'add_to_cart')
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(limit)}
    """


def learn_event_types_sql(before: dt.date, limit: int, events: str = "events") -> str:
    """The most frequent event types outside the contract's vocabulary before ``before`` (ties
    by name, so both engines learn the same list)."""
    canonical = ", ".join(sql_string(t) for t in CANONICAL_EVENT_TYPES)
    return f"""
        SELECT event_type FROM {events}
        WHERE timestamp < TIMESTAMP '{before} 00:00:00' AND event_type NOT IN ({canonical})
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(limit)}
    """


def data_end_sql(events: str = "events") -> str:
    """The last event's timestamp (see :func:`day_after`)."""
    return f"SELECT max(timestamp) FROM {events}"


def namespaces_sql(identity_map: str = "identity_map") -> str:
    """The identity namespaces present."""
    return f"SELECT DISTINCT namespace FROM {identity_map} ORDER BY 1"


def representatives_sql(identity_map: str, namespaces: list[str]) -> str:
    """One representative identity per namespace and profile (the smallest value): the score
    table's identity columns."""
    selects = "".join(
        f", min(value) FILTER (WHERE namespace = {sql_string(n)}) AS {sql_ident(n)}" for n in namespaces
    )
    return f"SELECT profile_id{selects} FROM {identity_map} GROUP BY profile_id"


def day_after(last) -> dt.date:
    """The day after the last event: the default cutoff (every earlier day is complete)."""
    if last is None:
        raise UserError("no events to build features from")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)


def learn_categories(con: duckdb.DuckDBPyConnection, before: dt.date, limit: int) -> list[str]:
    """The most viewed and bought categories before ``before`` (the training snapshot only)."""
    return [r[0] for r in con.execute(learn_categories_sql(before, limit)).fetchall()]


def data_end(con: duckdb.DuckDBPyConnection) -> dt.date:
    """The day after the last event: the default cutoff (every earlier day is complete)."""
    return day_after(con.execute(data_end_sql()).fetchone()[0])


def _types_sql(event_types: list[str]) -> str:
    return ", ".join(sql_string(t) for t in event_types)


def history_sql(event_types: list[str], events: str = "events") -> str:
    """One scan for a snapshot plan: per day, the profiles whose first event of ``event_types``
    falls on it and that first event's time, with the first and last event of any type (rows:
    day, profiles, first of the types, first event, last event; a NULL day holds the profiles
    without such an event). Plain CASE and CAST, which Spark's dialect reads too."""
    first_of_types = f"min(CASE WHEN event_type IN ({_types_sql(event_types)}) THEN timestamp END)"
    return (
        "SELECT CAST(first_seen AS DATE) AS day, count(first_seen), min(first_seen), min(first_event), "
        f"max(last_event) FROM (SELECT profile_id, {first_of_types} AS first_seen, "
        f"min(timestamp) AS first_event, max(timestamp) AS last_event FROM {events} "
        "GROUP BY profile_id) AS seen GROUP BY 1"
    )


@dataclass(frozen=True)
class EventHistory:
    """What a snapshot plan reads of the events, from one scan (:func:`history_sql`): their span,
    when the history of some event types starts, and the profiles seen before any date."""

    span: tuple[dt.date, dt.date] | None  # the first event's day and the data end; None: no events
    start: dt.date | None  # the first event of the types' day; None: there is none
    first_seen: dict[dt.date, int]  # day -> profiles whose first event of the types is on it

    @classmethod
    def of(cls, rows: list[tuple]) -> EventHistory:
        """The history from :func:`history_sql`'s rows."""
        firsts = [r[3] for r in rows if r[3] is not None]
        if not firsts:
            return cls(None, None, {})
        span = (pd.Timestamp(min(firsts)).date(), day_after(max(r[4] for r in rows if r[4] is not None)))
        starts = [r[2] for r in rows if r[2] is not None]
        start = pd.Timestamp(min(starts)).date() if starts else None
        seen = {pd.Timestamp(r[0]).date(): int(r[1]) for r in rows if r[0] is not None}
        return cls(span, start, seen)

    def profiles_seen(self, dates: list[dt.date]) -> dict[dt.date, int]:
        """Per date, the profiles with an event of the types before it: the snapshot plan's
        estimate of a date's rows (an upper bound of most populations)."""
        return {d: sum(n for day, n in self.first_seen.items() if day < d) for d in dates}


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


class SqlEvents(ABC):
    """The questions loaded events answer with one query each, written once in DuckDB's SQL, the
    as-of sources and a model's population snapshot; an engine supplies :meth:`rows` (Spark
    transpiles the query with sqlglot) and the primitives of
    :class:`~propensity.features.build.model_frames.FrameSource`."""

    graph: Any  # the identity graph seen as of dates (None: each event's own profile_id)

    @abstractmethod
    def rows(self, sql: str) -> list[tuple]:
        """The rows of a query over the loaded views, on this machine."""

    def sources(self, as_of: dt.date) -> AsOfSources:
        """The events and profiles as of ``as_of``: what every snapshot at that date reads."""
        if self.graph is None:
            return AsOfSources(as_of, "events", "profiles", "identity_map")
        return self.graph.sources(as_of)

    def oracle(self, frame: pd.DataFrame, outcome: OutcomeConfig) -> np.ndarray | None:
        """The true probabilities of a synthetic world's outcome for ``frame``; None here (not
        synthetic, or on Spark: a synthetic world's ground truth is a one-machine check)."""
        return None

    def data_end(self) -> dt.date:
        """The day after the last event: the default cutoff."""
        return day_after(self.rows(data_end_sql())[0][0])

    def span(self) -> tuple[dt.date, dt.date] | None:
        """The day of the first event and the data end (the day after the last), in one scan;
        None without events."""
        first, last = self.rows("SELECT min(timestamp), max(timestamp) FROM events")[0]
        return None if first is None else (pd.Timestamp(first).date(), day_after(last))

    def vocabulary(self, before: dt.date, categories: int, event_types: int) -> tuple[list[str], list[str]]:
        """The most viewed and bought categories (at most ``categories``) and the most frequent
        non-canonical event types (at most ``event_types``) before ``before``; a limit of 0
        asks nothing."""
        learned = [
            [r[0] for r in self.rows(sql(before, limit))] if limit > 0 else []
            for sql, limit in ((learn_categories_sql, categories), (learn_event_types_sql, event_types))
        ]
        return learned[0], learned[1]

    def history(self, event_types: list[str]) -> EventHistory:
        """The events' span, the start of the history of ``event_types`` and the profiles first
        seen each day with one of them, in one scan (:class:`EventHistory`)."""
        return EventHistory.of(self.rows(history_sql(event_types)))

    def treated(self, treatment: TreatmentConfig, as_ofs: list[dt.date]) -> pd.DataFrame:
        """``profile_id``, ``as_of`` of the profiles an uplift model's treatment event reached in
        the window up to each ``as_of`` (:func:`treated_sql`)."""
        rows = self.rows(treated_sql(treatment, as_ofs))
        frame = pd.DataFrame(rows, columns=["profile_id", "as_of"])
        frame["as_of"] = pd.to_datetime(frame["as_of"])
        return frame

    def population_snapshot(
        self, fs: FeatureSet, model: ModelConfig, as_of: dt.date, cutoff: dt.date
    ) -> tuple[Any, bool]:
        """The model's population at ``as_of`` (a relation), labelled when its horizon has passed
        (:func:`~propensity.features.build.model_frames.population_snapshot`)."""
        return model_frames.population_snapshot(self, fs, model, as_of, cutoff)  # type: ignore[arg-type]
