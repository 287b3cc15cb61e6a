"""Sampled training rows: labels first, then features for the chosen rows only.

Labels are cheap, features are not. One aggregation over the events finds, for every profile
and snapshot date, whether the profile is in that snapshot (an event in the look-back before
it) and whether an outcome event falls in its horizon (a *hit*). From those alone the rows are
chosen before any feature is built:

* the test snapshot's held-out profiles and the validation snapshot's validation profiles are
  kept whole (the same profile hashes as :func:`propensity.models.split.split`), so the test
  figures and the validation choices read every row they would read unsampled;
* on every other snapshot, each row that may be positive (a hit; for ``occurs: false``, no hit)
  and every row of a seeded sample of profiles (``md5(sample-<seed>:profile_id) < rate``, a
  profile's rows together), the rate bringing the total near ``training.sampling.rows``.

The features are then built for those rows only, in profile partitions of at most
``training.sampling.partition_rows`` rows (memory bounded by the setting, not by the data), and
once labelled each row is kept when it is whole, positive or of a sampled profile, with the
weight 1 / its chance of being kept: 1 for whole and positive rows, 1 / rate for the sampled
negatives. Weighted sums over the kept rows are unbiased estimates of the sums over all rows, so
fits, calibration and the weighted positive rate stay those of the full frame.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.config import ModelConfig, OutcomeConfig
from propensity.core.sampling import WEIGHT, profile_fraction
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.model_frames import (
    check_history,
    labelled_sql,
    order_value_to_beat,
    outcome_filter,
)
from propensity.features.build.population import population_rule
from propensity.features.build.snapshots import snapshot_dates
from propensity.features.build.sql_compiler import day_number
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.identity.as_of import IdentityGraph
from propensity.features.sql import sql_string


@dataclass(frozen=True)
class RowChoice:
    """How sampled training chooses its rows: the plan's roles, the split's profile groups (the
    same salts and shares as :func:`propensity.models.split.split`) and the budget."""

    test: dt.date
    validation: dt.date
    seed: int
    test_fraction: float  # training.test_profile_fraction
    validation_share: float  # the validation profiles' share of the others
    rows: int  # about this many chosen rows (training.sampling.rows)
    min_rate: float
    partition_rows: int


@dataclass(frozen=True)
class Candidates:
    """The rows to build features for, the rate of the sampled negatives, and the counts."""

    rows: pd.DataFrame  # profile_id, as_of_day: sorted by profile_id
    rate: float
    whole_rows: int  # test and validation profiles at their snapshots
    maybe_positive_rows: int
    other_rows: int  # eligible rows that are certainly negative, before sampling

    def record(self) -> dict:
        """The choice's numbers, for the run's record and the plan."""
        return {
            "sample_rate": round(self.rate, 6),
            "sample_whole_rows": self.whole_rows,
            "sample_maybe_positive_rows": self.maybe_positive_rows,
            "sample_negative_rows_available": self.other_rows,
            "sample_candidate_rows": len(self.rows),
        }


def presence_and_hits_sql(
    dates: list[dt.date], events: str, outcome: OutcomeConfig, lookback_days: int
) -> str:
    """Per profile and date ``i``: ``present_i`` (an event in the look-back before the date, as
    the feature build's presence rule) and ``hit_i`` (an outcome event in its horizon); one scan."""
    outcome_event = outcome_filter(outcome)
    columns = []
    for i, as_of in enumerate(dates):
        start, end = as_of - dt.timedelta(days=lookback_days), as_of + dt.timedelta(days=outcome.horizon_days)
        columns.append(
            f"coalesce(max(CASE WHEN e.timestamp < TIMESTAMP '{as_of}' THEN e.timestamp END) "
            f">= TIMESTAMP '{start}', false) AS present_{i}"
        )
        columns.append(
            f"coalesce(bool_or({outcome_event} AND e.timestamp >= TIMESTAMP '{as_of}' "
            f"AND e.timestamp < TIMESTAMP '{end}'), false) AS hit_{i}"
        )
    return f"SELECT e.profile_id, {', '.join(columns)} FROM {events} e GROUP BY e.profile_id ORDER BY 1"


def _groups(profile_ids: pd.Series, choice: RowChoice) -> tuple[np.ndarray, np.ndarray]:
    """(test profile, validation profile) flags: the split's own hashes and shares."""
    test = profile_fraction(profile_ids, f"test-{choice.seed}") < choice.test_fraction
    validating = (
        profile_fraction(profile_ids, f"validation-{choice.seed}") < choice.validation_share
    ) & ~test
    return test, validating


def choose_candidates(
    flags: pd.DataFrame, dates: list[dt.date], choice: RowChoice, occurs: bool
) -> Candidates:
    """The rows to build features for, from :func:`presence_and_hits_sql`'s ``flags``."""
    ids = flags["profile_id"].reset_index(drop=True)
    present = np.column_stack([flags[f"present_{i}"].to_numpy(bool) for i in range(len(dates))])
    hit = np.column_stack([flags[f"hit_{i}"].to_numpy(bool) for i in range(len(dates))])
    test_group, validating = _groups(ids, choice)
    test_col, valid_col = dates.index(choice.test), dates.index(choice.validation)
    whole = np.zeros_like(present)
    whole[:, test_col] = present[:, test_col] & test_group
    whole[:, valid_col] = present[:, valid_col] & validating
    eligible = present & ~test_group[:, None]
    eligible[:, test_col] = False  # the test snapshot is its held-out profiles' alone
    eligible &= ~whole
    maybe_positive = eligible & (hit if occurs else ~hit)
    others = eligible & ~maybe_positive
    budget = choice.rows - int(whole.sum()) - int(maybe_positive.sum())
    n_others = int(others.sum())
    rate = 1.0 if n_others == 0 else float(np.clip(budget / n_others, choice.min_rate, 1.0))
    drawn = profile_fraction(ids, f"sample-{choice.seed}") < rate
    chosen = whole | maybe_positive | (others & drawn[:, None])
    rows, cols = np.nonzero(chosen)  # row-major: sorted by profile, then date
    days = np.array([day_number(d) for d in dates], dtype=np.int32)
    frame = pd.DataFrame({"profile_id": ids.to_numpy()[rows], "as_of_day": days[cols]})
    return Candidates(frame, rate, int(whole.sum()), int(maybe_positive.sum()), n_others)


def partitions(candidates: pd.DataFrame, partition_rows: int) -> list[np.ndarray]:
    """The candidates' profiles in consecutive groups of about ``partition_rows`` rows (a
    profile's rows stay together, so a group exceeds it by less than one profile's rows)."""
    per_profile = candidates.groupby("profile_id", sort=True).size()
    if per_profile.empty:
        return []
    ends = np.cumsum(per_profile.to_numpy())
    part = (ends - 1) // partition_rows
    ids = per_profile.index.to_numpy()
    return [ids[part == p] for p in np.unique(part)]


def chosen_weights(frame: pd.DataFrame, choice: RowChoice, candidates: Candidates) -> pd.DataFrame:
    """The labelled rows the choice keeps, with their ``weight``: whole and positive rows 1,
    the sampled profiles' negatives 1 / rate. Rows the split never reads (held-out profiles
    before the test snapshot) are dropped."""
    as_of = pd.to_datetime(frame["as_of"]).dt.date.to_numpy()
    test_group, validating = _groups(frame["profile_id"], choice)
    at_test, at_valid = as_of == choice.test, as_of == choice.validation
    whole = (at_test & test_group) | (at_valid & validating)
    usable = whole | (~test_group & ~at_test)
    positive = frame["label"].to_numpy() == 1
    # By the hash, not by the candidates' list: profiles the identity graph built apart at a
    # date (not among the final profiles) are drawn at the same rate.
    drawn = profile_fraction(frame["profile_id"], f"sample-{choice.seed}") < candidates.rate
    keep = usable & (whole | positive | drawn)
    weight = np.where(whole | positive, 1.0, 1.0 / candidates.rate)
    out = frame[keep].copy()
    out[WEIGHT] = weight[keep]
    return out


def register_partition(
    con: duckdb.DuckDBPyConnection, candidates: pd.DataFrame, profiles: np.ndarray
) -> None:
    """The partition's chosen rows (``_sample_keep``: its profiles' candidates) on ``con``."""
    rows = candidates[candidates["profile_id"].isin(profiles)]
    con.register("_sample_keep", pa.Table.from_pandas(rows, preserve_index=False))


def partition_events_sql(profiles: np.ndarray, events: str = "events_seen") -> str:
    """The events of the profile_id range of a partition's profiles (sorted): a filter, so the
    events keep the ingest's (profile, time) order and the daily rollup streams them (a join
    with the partition's profiles loses that order, and the rollup fell back to DuckDB's
    grouped aggregate after streaming); the Parquet reader skips the row groups outside the
    range by their min/max. Profiles in the range that are not candidates are rolled up too
    and left out by ``keep`` (:func:`.stacked_build.build_snapshots`)."""
    low, high = sql_string(str(profiles[0])), sql_string(str(profiles[-1]))
    return f"SELECT * FROM {events} WHERE profile_id >= {low} AND profile_id <= {high}"


def sampled_training_frame(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    model: ModelConfig,
    cutoff: dt.date,
    choice: RowChoice,
    graph: IdentityGraph | None = None,
) -> tuple[pd.DataFrame, list[dt.date], dict]:
    """The stacked, labelled snapshots of :func:`.model_frames.training_frame` restricted to the
    chosen rows, with their ``weight``; the features built partition by partition. Returns
    (frame, dates, the sampling's record)."""
    dates = snapshot_dates(
        cutoff,
        model.outcome.horizon_days,
        model.training.snapshots.count,
        model.training.snapshots.spacing_days,
        model.training.snapshots.seasonal,
    )
    check_history(con.execute("SELECT min(timestamp) FROM events").fetchone()[0], model, dates)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW events_seen AS SELECT * FROM events "
        f"WHERE timestamp < TIMESTAMP '{cutoff} 00:00:00'"
    )
    flags = con.execute(presence_and_hits_sql(dates, "events_seen", model.outcome, fs.lookback_days)).df()
    candidates = choose_candidates(flags, dates, choice, model.outcome.occurs)
    del flags
    population = population_rule(model, fs).sql("duckdb", column_prefix="f")
    groups = partitions(candidates.rows, choice.partition_rows)
    frames = _partition_frames(con, fs, model, dates, choice, candidates, groups, population, graph)
    # Partition after partition, each by date then profile: no sorted copy of the whole frame.
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    del frames
    record = {**candidates.record(), "sample_partitions": len(groups), "sample_rows": len(frame)}
    return frame, dates, record


def _partition_frames(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    model: ModelConfig,
    dates: list[dt.date],
    choice: RowChoice,
    candidates: Candidates,
    groups: list[np.ndarray],
    population: str,
    graph: IdentityGraph | None,
) -> list[pd.DataFrame]:
    """The chosen rows' labelled features and weights, one frame per profile partition of
    ``groups`` (each reads only its profiles' events)."""
    reattributed = graph.reattributed(dates, "events_seen", fs.lookback_days) if graph is not None else None
    outcomes = (
        graph.outcomes_sql(outcome_filter(model.outcome), model.outcome.horizon_days, dates, "events_seen")
        if graph is not None
        else None
    )
    apart_done = dataclasses.replace(reattributed, key_days=np.zeros(0, np.int32)) if reattributed else None
    frames = []
    for i, profiles in enumerate(groups):
        register_partition(con, candidates.rows, profiles)
        con.execute(f"CREATE OR REPLACE TEMP VIEW events_partition AS {partition_events_sql(profiles)}")
        build_snapshots(
            con,
            fs,
            dates,
            table="snapshot_features",
            events="events_partition",
            where=population,
            # Every partition leaves out the final profiles the graph then saw apart; those
            # profiles are built (all their rows) with the first partition only.
            reattributed=reattributed if i == 0 or reattributed is None else apart_done,
            keep="_sample_keep",
        )
        sql = labelled_sql(
            "SELECT * FROM snapshot_features",
            model.outcome,
            events="events_partition",
            usual_order_value=order_value_to_beat(fs, model.outcome),
            outcomes=outcomes,
        )
        frames.append(chosen_weights(con.execute(sql).df(), choice, candidates))
        con.execute("DROP TABLE snapshot_features")
    if groups:
        con.unregister("_sample_keep")
    return frames
