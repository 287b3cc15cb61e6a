"""Journeys at scale: a funnel and attribution on 1M profiles / 35M events, on DuckDB.

The events are generated in DuckDB (deterministic hashes of the row number, no simulator:
the point is the query's size, not the story): 35 events per profile over 180 days, 20
channels, 5 categories. In the same run:

* **funnel**: ``product_view[category=yoga] > add_to_cart > checkout > purchase`` in a 7-day
  window, by :func:`propensity.features.journeys.funnel.run_funnel` (units, first times,
  open windows, first channel) and :func:`summarise`, against a hand-written DuckDB query of
  the same funnel: per step, a range join on the previous step's events carrying the latest
  start (the same definition, so the entrants must be equal, and are checked);
* **attribution**: touchpoints of every profile in the last 30 days (``touches_seconds``:
  the query to arrays), then first/last/linear/time-decay/position, the exact Markov removal
  effect and exact Shapley values over the 20 channels (``attribution_seconds``, no
  bootstrap), and the same with a bootstrap (``bootstrap_seconds``, ``--bootstrap`` resamples).

Prints a table, then one JSON line: ``profiles``, ``events``, ``funnel_seconds``,
``handwritten_seconds``, ``ratio``, ``attribution_seconds``, ``peak_rss_mib`` and the rest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import tempfile
import time
from pathlib import Path

import duckdb

from propensity.features.connection import connect
from propensity.features.journeys import DuckDBRunner, parse_steps
from propensity.features.journeys.attribution import attribute
from propensity.features.journeys.funnel import run_funnel, summarise
from propensity.features.journeys.funnel_sql import FunnelSpec
from propensity.features.journeys.touches import run_touches

TYPES = [
    ("page_view", 30),
    ("product_view", 28),
    ("add_to_cart", 9),
    ("checkout", 5),
    ("purchase", 3),
    ("email_open", 10),
    ("push_open", 5),
    ("search", 6),
    ("app_launch", 4),
]
START = dt.datetime(2025, 1, 1)
DAYS = 180
WINDOW = 7 * 86400


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(con: duckdb.DuckDBPyConnection, profiles: int, per_profile: int, path: Path) -> int:
    """``profiles * per_profile`` events to Parquet; returns the row count."""
    cases, edge = [], 0
    for name, weight in TYPES:
        edge += weight
        cases.append(f"WHEN r < {edge} THEN '{name}'")
    total = sum(w for _, w in TYPES)
    span = DAYS * 86400 * 1_000_000
    con.execute(f"""
        COPY (
            SELECT 'p' || lpad(CAST(i // {per_profile} AS VARCHAR), 8, '0') AS profile_id,
                   TIMESTAMP '{START}' + to_microseconds(CAST(hash(i, 1) % {span} AS BIGINT)) AS timestamp,
                   CASE {" ".join(cases)} END AS event_type,
                   'channel_' || lpad(CAST(hash(i, 3) % 20 AS VARCHAR), 2, '0') AS channel,
                   ['yoga', 'running', 'hiking', 'training', 'lifestyle'][CAST(1 + hash(i, 4) % 5 AS BIGINT)]
                       AS product_category,
                   'e' || CAST(i AS VARCHAR) AS event_id
            FROM (SELECT i, hash(i, 2) % {total} AS r FROM range({profiles * per_profile}) t(i))
        ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
    """)
    return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]


def handwritten(con: duckdb.DuckDBPyConnection, end: dt.datetime) -> list[int]:
    """The same funnel written by hand: per step, a range join on the previous step's
    (event, latest start) pairs within the window; entrants = profiles with any pair."""
    w = WINDOW * 1_000_000
    rows = con.execute(f"""
        WITH e AS (
            SELECT profile_id AS pid, epoch_us(timestamp) AS t, event_type, product_category
            FROM events WHERE timestamp < TIMESTAMP '{end}'
        ),
        v AS (SELECT pid, t, t AS st FROM e WHERE event_type = 'product_view' AND product_category = 'yoga'),
        c AS (SELECT pid, t FROM e WHERE event_type = 'add_to_cart'),
        k AS (SELECT pid, t FROM e WHERE event_type = 'checkout'),
        p AS (SELECT pid, t FROM e WHERE event_type = 'purchase'),
        s1 AS (
            SELECT c.pid, c.t, max(v.st) AS st FROM c JOIN v
              ON v.pid = c.pid AND v.t < c.t AND v.t >= c.t - {w}
            GROUP BY c.pid, c.t
        ),
        s2 AS (
            SELECT k.pid, k.t, max(s1.st) AS st FROM k JOIN s1
              ON s1.pid = k.pid AND s1.t < k.t AND s1.st >= k.t - {w}
            GROUP BY k.pid, k.t
        ),
        s3 AS (
            SELECT p.pid, p.t, max(s2.st) AS st FROM p JOIN s2
              ON s2.pid = p.pid AND s2.t < p.t AND s2.st >= p.t - {w}
            GROUP BY p.pid, p.t
        )
        SELECT (SELECT count(DISTINCT pid) FROM v), (SELECT count(DISTINCT pid) FROM s1),
               (SELECT count(DISTINCT pid) FROM s2), (SELECT count(DISTINCT pid) FROM s3)
    """).fetchall()[0]
    return [int(x) for x in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events-per-profile", type=int, default=35)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument(
        "--data", type=Path, default=None, help="Where to write the events (default: a temp dir)."
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.data or Path(tmp)) / f"journey_events_{args.profiles}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        con = connect()
        con.execute("SET enable_progress_bar = false")
        if not path.exists():
            print(f"generating {args.profiles * args.events_per_profile:,} events ...", flush=True)
            generate(con, args.profiles, args.events_per_profile, path)
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{path}')")
        events = con.execute("SELECT count(*) FROM events").fetchone()[0]
        end = START + dt.timedelta(days=DAYS)
        runner = DuckDBRunner(con)
        spec = FunnelSpec(
            tuple(parse_steps("product_view[category=yoga] > add_to_cart > checkout > purchase")), WINDOW
        )
        # Each query three times, alternating, best of three: the same warm file cache for both,
        # and a moment of load on a shared machine hits one run of a side, not its best.
        ours, hand = [], []
        for _ in range(3):
            started = time.perf_counter()
            units = run_funnel(runner, spec, "events", end, first_channel=False)
            table = summarise(units, spec)
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            expected = handwritten(con, end)
            hand.append(time.perf_counter() - started)
        entrants = table["entrants"].tolist()
        assert entrants == expected, (entrants, expected)

        started = time.perf_counter()
        paths = run_touches(
            runner, parse_steps("purchase")[0], "events", end, end - dt.timedelta(days=30), 30 * 86400
        )
        touches_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = attribute(paths, bootstrap=0)
        attribution_seconds = time.perf_counter() - started
        started = time.perf_counter()
        attribute(paths, bootstrap=args.bootstrap, seed=0)
        bootstrap_seconds = time.perf_counter() - started

    funnel_seconds, handwritten_seconds = min(ours), min(hand)
    print(f"{'':<28}{'seconds':>10}")
    print(f"{'funnel (ours)':<28}{funnel_seconds:>10.2f}")
    print(f"{'funnel (hand-written)':<28}{handwritten_seconds:>10.2f}")
    print(f"{'touchpoints -> paths':<28}{touches_seconds:>10.2f}")
    print(f"{'attribution, 7 methods':<28}{attribution_seconds:>10.2f}")
    print(f"{f'  with {args.bootstrap} resamples':<28}{bootstrap_seconds:>10.2f}")
    print(
        f"entrants per step: {entrants}; {result.paths:,} paths, {len(paths.channels)} channels, "
        f"{len(paths.touch_path):,} touches, {result.conversions:,} conversions"
    )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "events": int(events),
                "funnel_seconds": round(funnel_seconds, 3),
                "handwritten_seconds": round(handwritten_seconds, 3),
                "ratio": round(funnel_seconds / handwritten_seconds, 3),
                "attribution_seconds": round(attribution_seconds, 3),
                "touches_seconds": round(touches_seconds, 3),
                "bootstrap_seconds": round(bootstrap_seconds, 3),
                "bootstrap": args.bootstrap,
                "paths": result.paths,
                "channels": len(paths.channels),
                "touches": len(paths.touch_path),
                "entrants": entrants,
                "peak_rss_mib": round(rss_mib()),
            }
        )
    )


if __name__ == "__main__":
    main()
