"""Paths: the most frequent sequences of events (or channels) leading to, or following, an event.

Each profile's first event matching the target (before the end of the data) anchors its path;
``to`` paths are the ``depth`` events before it, ``from`` paths the ``depth`` events after it,
by event type or channel, with runs of the same value collapsed into one node (``web, web,
app`` is ``web > app``). A path shorter than ``depth`` starts at ``(start)`` or stops at
``(end)``. The query pivots the nodes into columns and counts paths in SQL, so it is the same
text on DuckDB and Spark; :func:`flow_links` turns the counted paths into the links of a
flow chart.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pandas as pd

from propensity.core.errors import UserError
from propensity.features.journeys.engine import Runner
from propensity.features.journeys.spec import Step
from propensity.features.sql import Dialect

START, END = "(start)", "(end)"


def paths_sql(
    target: Step,
    events: str,
    end: dt.datetime,
    dialect: Dialect,
    direction: str = "to",
    depth: int = 4,
    by: str = "event_type",
    columns: set[str] | None = None,
    since: dt.datetime | None = None,
) -> str:
    """Counted paths: ``n1`` .. ``n{depth}`` (the nodes in time order, the target excluded) and
    ``profiles``; nodes missing because the path is short are NULL."""
    if direction not in ("to", "from"):
        raise UserError(f"paths: direction must be 'to' or 'from', got {direction!r}")
    if not 1 <= depth <= 20:
        raise UserError(f"paths: depth must be between 1 and 20, got {depth}")
    if columns is not None and by not in columns:
        raise UserError(f"paths: the events have no column '{by}' to follow")
    q = dialect.ident
    where = f"{q('timestamp')} < {dialect.timestamp(end)} AND {q('profile_id')} IS NOT NULL"
    if since is not None:
        where += f" AND {q('timestamp')} >= {dialect.timestamp(since)}"
    before = direction == "to"
    side = "e.t < a.at" if before else "e.t > a.at"
    # Nearest node first: rank 1 is next to the target on either side.
    nearest = "e.t DESC, e.v DESC" if before else "e.t, e.v"
    pivot = ", ".join(f"max(CASE WHEN rk = {i} THEN v END) AS r{i}" for i in range(1, depth + 1))
    # Time order: "to" paths read from the farthest node to the target.
    order = range(depth, 0, -1) if before else range(1, depth + 1)
    nodes = ", ".join(f"r{r} AS n{i}" for i, r in enumerate(order, start=1))
    listed = ", ".join(f"n{i}" for i in range(1, depth + 1))
    return f"""
        WITH e AS (
            SELECT {q("profile_id")} AS pid, {dialect.micros(q("timestamp"))} AS t,
                   coalesce(CAST({q(by)} AS {dialect.string_type}), '(none)') AS v,
                   {target.condition(columns, dialect.quote)} AS hit
            FROM {events} WHERE {where}
        ), a AS (
            SELECT pid, min(t) AS at FROM e WHERE hit GROUP BY pid
        ), side AS (
            SELECT e.pid, e.t, e.v FROM e JOIN a ON e.pid = a.pid AND {side}
        ), runs AS (
            SELECT pid, t, v, lag(v) OVER (PARTITION BY pid ORDER BY t, v) AS pv
            FROM side
        ), ranked AS (
            SELECT pid, v, row_number() OVER (PARTITION BY pid ORDER BY {nearest.replace("e.", "")}) AS rk
            FROM runs WHERE pv IS NULL OR pv <> v
        ), pivoted AS (
            SELECT a.pid, {pivot}
            FROM a LEFT JOIN ranked ON ranked.pid = a.pid AND ranked.rk <= {depth}
            GROUP BY a.pid
        )
        SELECT {nodes}, count(*) AS profiles FROM pivoted GROUP BY {listed}
    """


def top_paths(counted: pd.DataFrame, target: str, direction: str, top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent paths as text (``a > b > [target]``), with profiles and share."""
    nodes = [c for c in counted.columns if c.startswith("n")]
    total = int(counted["profiles"].sum())
    rows = []
    for values, profiles in zip(counted[nodes].itertuples(index=False), counted["profiles"], strict=True):
        seen = [str(v) for v in values if v is not None and v == v]
        full = len(seen) == len(nodes)
        if direction == "to":
            path = ([] if full else [START]) + seen + [f"[{target}]"]
        else:
            path = [f"[{target}]", *seen] + ([] if full else [END])
        rows.append({"path": " > ".join(path), "steps": len(seen), "profiles": int(profiles)})
    frame = pd.DataFrame(rows, columns=["path", "steps", "profiles"])
    frame = frame.sort_values(["profiles", "path"], ascending=[False, True], kind="stable").head(top)
    frame["share"] = frame["profiles"] / total if total else 0.0
    return frame.reset_index(drop=True)


def flow_links(counted: pd.DataFrame, target: str, direction: str) -> pd.DataFrame:
    """Links between consecutive positions of the paths (``source``, ``target`` as
    ``position:value``, ``profiles``): the edges of a Sankey-style flow ending (or starting)
    at the target."""
    nodes = [c for c in counted.columns if c.startswith("n")]
    depth = len(nodes)
    links: dict[tuple[str, str], int] = {}
    for values, profiles in zip(counted[nodes].itertuples(index=False), counted["profiles"], strict=True):
        seen = [str(v) for v in values if v is not None and v == v]
        if direction == "to":
            chain = [START] * (depth - len(seen)) + seen + [f"[{target}]"]
            labelled = [f"{i - depth}:{v}" for i, v in enumerate(chain)]
        else:
            chain = [f"[{target}]", *seen] + [END] * (depth - len(seen))
            labelled = [f"{i}:{v}" for i, v in enumerate(chain)]
        for a, b in itertools.pairwise(labelled):
            if a.split(":", 1)[1] in (START, END) and b.split(":", 1)[1] in (START, END):
                continue
            links[(a, b)] = links.get((a, b), 0) + int(profiles)
    frame = pd.DataFrame([(a, b, n) for (a, b), n in links.items()], columns=["source", "target", "profiles"])
    return frame.sort_values(["profiles", "source", "target"], ascending=[False, True, True]).reset_index(
        drop=True
    )


def run_paths(
    runner: Runner,
    target: Step,
    events: str,
    end: dt.datetime,
    direction: str = "to",
    depth: int = 4,
    by: str = "event_type",
    since: dt.datetime | None = None,
) -> pd.DataFrame:
    """Counted paths on one engine (columns ``n1..n{depth}``, ``profiles``), in a stable order."""
    columns = runner.columns(events)
    sql = paths_sql(target, events, end, runner.dialect, direction, depth, by, columns, since)
    frame = runner.query(sql).to_pandas()
    nodes = [f"n{i}" for i in range(1, depth + 1)]
    frame[nodes] = frame[nodes].astype(object).where(frame[nodes].notna(), None)
    frame["profiles"] = frame["profiles"].astype("int64")
    key = frame[nodes].fillna("").astype(str).agg("\x1f".join, axis=1)
    return (
        frame.assign(_k=key)
        .sort_values(["profiles", "_k"], ascending=[False, True])
        .drop(columns="_k")
        .reset_index(drop=True)
    )
