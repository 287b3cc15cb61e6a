"""The scoring run's feature rows, built partition by partition through the stacked build.

Ingested events carry a dense integer ``profile_key`` in ``profile_id`` order and are written
sorted by it, so a partition of consecutive keys reads only its own row groups. Each partition's
features come from :func:`.stacked_build.build_snapshots` at the one as-of date (a daily
rollup of its events, then the compiled window pass: no grouped aggregate over the events), the
only call of the stacked build in scoring. Profiles the identity graph at the as-of sees apart
from the final ones are left out of every partition and built (from their events attributed as
of that date) with the first, as training's sampled build does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.connection import fetch_arrow, relation_columns
from propensity.features.identity.as_of import IdentityGraph

FEATURES = "score_features"  # the temp table holding one partition's feature rows
SEEN = "score_events_seen"  # the temp view of every event before the as-of


def stacked_build_applies(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the events and profiles carry the ingest's ``profile_key`` (ingested data), which
    the partitions of :func:`partition_tables` are ranges of."""
    return "profile_key" in relation_columns(con, "events") and "profile_key" in relation_columns(
        con, "profiles"
    )


def key_ranges(con: duckdb.DuckDBPyConnection, partitions: int) -> list[tuple[int, int]]:
    """``partitions`` ranges [low, high) of about as many profile keys each, covering every key."""
    keys = con.execute("SELECT coalesce(max(profile_key) + 1, 0) FROM profiles").fetchall()[0][0]
    cuts = np.unique(np.linspace(0, int(keys), max(1, partitions) + 1).round().astype(np.int64))
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts) if b > a]


def partition_tables(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    as_of: dt.date,
    graph: IdentityGraph | None,
    partitions: int,
    rows_sql: str,
) -> Iterator[pa.Table]:
    """Per profile-key range, ``rows_sql`` (a query reading :data:`FEATURES`) over that range's
    feature rows at ``as_of``, fetched whole: the caller explains one partition while the next
    is built. The feature rows are those of ``snapshot_sql`` over the graph's sources at
    ``as_of`` (the tests hold them to it)."""
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {SEEN} AS SELECT * FROM events "
        f"WHERE timestamp < TIMESTAMP '{as_of} 00:00:00'"
    )
    reattributed = graph.reattributed([as_of], SEEN, fs.lookback_days) if graph is not None else None
    built_apart = dataclasses.replace(reattributed, key_days=np.zeros(0, np.int64)) if reattributed else None
    ranges = key_ranges(con, partitions)
    tables = _built(con, fs, as_of, ranges, reattributed, built_apart, rows_sql)
    yield from in_profile_order(tables, _first_ids(con, ranges))
    con.execute(f"DROP TABLE IF EXISTS {FEATURES}")


def _first_ids(con: duckdb.DuckDBPyConnection, ranges: list[tuple[int, int]]) -> list[str]:
    """The profile_id of each range's first key."""
    lows = ", ".join(str(low) for low, _ in ranges) or "NULL"
    found = dict(
        con.execute(f"SELECT profile_key, profile_id FROM profiles WHERE profile_key IN ({lows})").fetchall()
    )
    return [found[low] for low, _ in ranges]


def in_profile_order(tables: Iterator[pa.Table], first_ids: list[str]) -> Iterator[pa.Table]:
    """Each range's rows (ranges in key order, so in profile order too) with exactly the ids
    from its range's first up to the next range's: rows the first range brings that belong
    further on (profiles the graph saw apart, whose ids fall anywhere) are held back and
    handed over with the range they fall in. Each table sorted, the tables make one
    ascending run of profile ids, which is written with no sort of the whole run."""
    pending: pa.Table | None = None
    for table, next_first in zip(tables, [*first_ids[1:], None], strict=True):
        if pending is not None and pending.num_rows:
            table = pa.concat_tables([pending, table])
        if next_first is None:
            pending = None
            yield table
            continue
        here = pc.less(table.column("profile_id"), next_first)
        pending = table.filter(pc.invert(here))
        yield table.filter(here)


def _built(con, fs, as_of, ranges, reattributed, built_apart, rows_sql: str) -> Iterator[pa.Table]:
    """``rows_sql`` over each key range's feature rows, built by the stacked build."""
    for i, (low, high) in enumerate(ranges):
        # The events view itself with the key range (not a temp view of the range: another
        # cursor cannot see one), so the daily rollup streams the range on two cursors.
        build_snapshots(
            con,
            fs,
            [as_of],
            table=FEATURES,
            events="events",
            key_range=(low, high),
            # The profiles the graph then saw apart: left out of every partition, built whole
            # with the first.
            reattributed=reattributed if i == 0 else built_apart,
        )
        yield fetch_arrow(con, rows_sql)
