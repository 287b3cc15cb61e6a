"""What the point-in-time identity graph costs, measured for ``benchmarks/features.py``.

Ingest: the work only the point-in-time graph needs, re-run on an ingest's stored graph in
the same process as the ingest: the first-seen time of every identity tuple (a ``min`` beside
what was a ``DISTINCT``) and the unsettled intervals (one spanning forest with link times as
weights, :func:`propensity.features.identity.graph.unsettled_intervals`). Snapshots: the
same builds over the graph of each as-of date and over the final graph (the all-time
attribution, which leaks later links into earlier snapshots), timed in the same rounds.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.build.stacked_build import build_snapshots
from propensity.features.connection import relation_columns
from propensity.features.identity import IdentityGraph
from propensity.features.identity.graph import ALWAYS, group_identities, unsettled_intervals
from propensity.features.sql import sql_string


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def ingest_extras(con, directory: Path, graph: IdentityGraph) -> dict:
    """Seconds of the point-in-time work of an ingest, and the size of what it stores."""
    events = f"read_parquet({sql_string(str(directory / 'events.parquet'))})"
    columns = ", ".join(graph.identity.namespaces)
    _, distinct = timed(
        lambda: con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {columns} FROM {events})")
    )
    _, first_seen = timed(
        lambda: con.execute(
            f"SELECT count(*) FROM (SELECT {columns}, min(timestamp) FROM {events} GROUP BY ALL)"
        ).fetchall()
    )
    nodes = con.execute(
        f"SELECT namespace, coalesce(epoch_us(first_seen), {ALWAYS}) AS t FROM identity_map ORDER BY node_key"
    ).fetchnumpy()
    links = con.execute(
        f"SELECT a, b, coalesce(epoch_us(first_seen), {ALWAYS}) AS t FROM identity_links ORDER BY a, b"
    ).fetchnumpy()
    src, dst = (np.asarray(links[c], dtype=np.int64) for c in ("a", "b"))
    grouping = group_identities(np.asarray(nodes["namespace"], dtype=object), src, dst, graph.identity)
    unsettled, intervals = timed(
        lambda: unsettled_intervals(
            grouping, np.asarray(nodes["t"], dtype=np.int64), src, dst, np.asarray(links["t"], dtype=np.int64)
        )
    )
    sizes = {
        name: (directory / f"{name}.parquet").stat().st_size
        for name in ("events", "identity_map", "identity_links", "identity_unsettled")
    }
    extra, forest = first_seen - distinct, intervals
    return {
        "summary": (
            f"its point-in-time work, re-run: first-seen times +{extra:.2f}s, unsettled intervals "
            f"{forest:.2f}s; graph files {sum(v for k, v in sizes.items() if k != 'events') / 2**20:.0f} MiB "
            f"(events {sizes['events'] / 2**20:.0f} MiB)"
        ),
        "first_seen_extra_seconds": round(first_seen - distinct, 3),
        "unsettled_intervals_seconds": round(intervals, 3),
        "identities": len(nodes["t"]),
        "links": len(src),
        "unsettled_components": len(np.unique(unsettled.component)),
        "graph_mib": round(sum(v for k, v in sizes.items() if k != "events") / 2**20, 1),
        "events_mib": round(sizes["events"] / 2**20, 1),
    }


class AsOfVariants:
    """The single snapshot at ``as_of`` and the stacked ``dates`` over the identity graph of
    each date, as timed variants; each run rebuilds the graphs from scratch."""

    def __init__(self, con, graph: IdentityGraph, fs, as_of: dt.date, dates: list[dt.date]) -> None:
        self.con, self.graph, self.fs, self.as_of, self.dates = con, graph, fs, as_of, dates
        self.changed: dict[dt.date, int] = {}

    def _fresh(self) -> IdentityGraph:
        self.graph.forget()
        return self.graph

    def single(self) -> None:
        sources = self._fresh().sources(self.as_of)
        sql = snapshot_sql(
            self.fs,
            self.as_of,
            relation_columns(self.con, sources.profiles),
            events=sources.events,
            profiles=sources.profiles,
        )
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE ours_as_of AS {sql}")

    def stacked(self) -> None:
        reattributed = self._fresh().reattributed(self.dates, "events", self.fs.lookback_days)
        self.changed = reattributed.changed_profiles
        build_snapshots(self.con, self.fs, self.dates, table="stacked_as_of", reattributed=reattributed)

    def frames_at_as_of(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The single snapshot and the stacked one at ``as_of``, both over the graph then."""
        return (
            self.con.execute("SELECT * FROM ours_as_of").df(),
            self.con.execute(f"SELECT * FROM stacked_as_of WHERE as_of = DATE '{self.as_of}'").df(),
        )
