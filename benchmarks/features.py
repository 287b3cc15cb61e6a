"""Feature build speed: ours against one hand-written DuckDB query and plain pandas.

    python benchmarks/features.py [--profiles N] [--memory-limit 2GB]

Generates (or reuses) N synthetic profiles (default 1M, ~20M events), ingests them once, then
times in the same run, on the same 35 core features at one as-of date:
  * ours: one date through the stacked build (``stacked_build.build_snapshots``: the daily
    rollup streamed from the profile-sorted events, then the compiled window pass);
  * ours by SQL: the registry compiled to SQL (``sql_compiler.snapshot_sql``, the
    engine-neutral form Spark and scoring's partitions run), as it was before;
  * handwritten: one DuckDB query written by hand for exactly these features;
  * pandas: the same features with vectorised pandas group-bys;
and then 8 stacked snapshots (``build_snapshots``: one daily rollup, then every snapshot's
windows from it) against the single snapshot. Ours, handwritten and pandas are checked to
agree. The single and stacked builds run twice: over the identity graph of each as-of date
(what the pipeline does) and over the final graph (the all-time attribution, for
comparison); the run reports the profiles attributed again at each date, the ingest time
(``--ingest`` to measure it again) and the ingest's point-in-time work
(``benchmarks/point_in_time.py``), the seconds of each phase of the single and stacked builds
(rollup, compiled pass, feature SQL and write) and the load average. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import time
from pathlib import Path

import pandas as pd

from propensity.core.config import EngineConfig, ProjectConfig
from propensity.features.build import daily_rollup, event_queries, kernels, sql_compiler, stacked_build
from propensity.features.build.registry import build_registry
from propensity.features.build.snapshots import snapshot_dates
from propensity.features.connection import relation_columns
from propensity.features.sql import DUCKDB
from propensity.pipeline.jobs import events as event_jobs

try:  # run as a script (python benchmarks/features.py) or imported as benchmarks.features
    from data import DATA, ensure_ingested
    from point_in_time import AsOfVariants, ingest_extras
    from references import CORE, handwritten_sql, pandas_features
except ImportError:  # pragma: no cover
    from benchmarks.data import DATA, ensure_ingested
    from benchmarks.point_in_time import AsOfVariants, ingest_extras
    from benchmarks.references import CORE, handwritten_sql, pandas_features


# The functions of the rollup build timed as its phases.
PHASES = {"_rollup_arrays": "rollup", "window_kernel": "pass", "_insert": "write"}


class Phases:
    """Seconds spent in each phase of the rollup build (the daily rollup, the compiled pass, the
    feature SQL and write), accumulated by wrapping those functions of ``stacked_build`` and
    ``kernels`` for the benchmark's run; ``take()`` returns the split since the last call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        for module in (stacked_build, kernels):
            for name, phase in PHASES.items():
                if hasattr(module, name):
                    setattr(module, name, self._wrapped(getattr(module, name), phase))

    def _wrapped(self, fn, phase: str):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return run

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return {k: round(v, 3) for k, v in out.items()}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def compare(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    a = a.sort_values("profile_id").reset_index(drop=True)[["profile_id", *CORE]]
    b = b.sort_values("profile_id").reset_index(drop=True)[["profile_id", *CORE]]
    pd.testing.assert_frame_equal(
        a.astype(dict.fromkeys(CORE, float)),
        b.astype(dict.fromkeys(CORE, float)),
        check_exact=False,
        rtol=1e-9,
        obj=name,
    )


def all_features(loaded, config: ProjectConfig, cutoff: dt.date, as_of: dt.date, events: int) -> None:
    """Every feature of the registry: what training and scoring build by default."""
    con = loaded.con
    fs = event_jobs.feature_set(loaded, config, as_of)
    dates = snapshot_dates(cutoff, 30, 8, 28)
    runs = {}
    for plan in ("windows", "buckets"):
        sql = sql_compiler.snapshot_sql(fs, as_of, relation_columns(con, "profiles"), plan=plan)
        _, runs[plan] = timed(lambda sql=sql: con.execute(f"CREATE OR REPLACE TEMP TABLE single AS {sql}"))
    _, runs["stacked"] = timed(lambda: stacked_build.build_snapshots(con, fs, dates, table="stacked"))
    chosen = sql_compiler.choose_plan(fs)
    single = runs[chosen]
    print(
        f"\n{events:,} events, {len(fs.features)} features, {len(fs.aggregates)} aggregates, "
        f"{len(fs.measures)} measures; the cost model picks '{chosen}'"
    )
    for name, seconds in runs.items():
        print(f"{name:<34}{seconds:>9.2f}{seconds / single:>8.2f} x the chosen plan")
    print(
        json.dumps(
            {
                "events": events,
                "features": len(fs.features),
                "plan": chosen,
                "windows_seconds": round(runs["windows"], 3),
                "buckets_seconds": round(runs["buckets"], 3),
                "snapshots_seconds": round(runs["stacked"], 3),
                "snapshots_ratio": round(runs["stacked"] / single, 3),
                "peak_rss_mib": round(rss_mib()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--memory-limit", default="3GB", help="DuckDB limit for the spill run")
    parser.add_argument(
        "--all-features",
        action="store_true",
        help="instead: every registry feature (8 learned categories), both single-snapshot plans "
        "and 8 stacked snapshots",
    )
    parser.add_argument("--ingest", action="store_true", help="ingest again, to time the ingest")
    parser.add_argument(
        "--engine-memory-limit", default=None, help="DuckDB limit for every other run (default: 60%% of RAM)"
    )
    args = parser.parse_args()

    config = ProjectConfig(engine=EngineConfig(memory_limit=args.engine_memory_limit))
    _, ingested, ingest_seconds = ensure_ingested(args.profiles, args.days, config, force_ingest=args.ingest)

    loaded = event_jobs.load_events(ingested, config)
    con = loaded.con
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    extras = ingest_extras(con, ingested, loaded.graph)
    took = f"{ingest_seconds:.1f}s" if ingest_seconds else "not run (--ingest to time it)"
    print(f"ingest: {took}; {extras['summary']}", flush=True)
    cutoff = event_queries.data_end(con)
    as_of = cutoff - dt.timedelta(days=30)
    if args.all_features:
        all_features(loaded, config, cutoff, as_of, events)
        return
    fs = build_registry(config.features, []).select(include=CORE)
    assert [f.name for f in fs.features] == [c for c in [f.name for f in fs.features] if c in CORE]
    assert len(fs.features) == len(CORE), sorted(set(CORE) - {f.name for f in fs.features})

    def ours():
        stacked_build.build_snapshots(con, fs, [as_of], table="ours")

    def ours_sql():
        con.execute(f"CREATE OR REPLACE TEMP TABLE ours_sql AS {sql_compiler.snapshot_sql(fs, as_of)}")

    def handwritten():
        con.execute(f"CREATE OR REPLACE TEMP TABLE handwritten AS {handwritten_sql(as_of, fs.lookback_days)}")

    dates = snapshot_dates(cutoff, 30, 8, 28)
    stacked_rows = 0

    def stacked():
        nonlocal stacked_rows
        stacked_rows = stacked_build.build_snapshots(con, fs, dates, table="stacked")

    # The stacked build's daily rollup alone, as it streams it from the profile-sorted events and
    # as DuckDB's grouped aggregate (the stacked build before the stream) computes the same.
    _, rollup_columns = stacked_build._rollup_columns(fs, packed=True)
    day_sql = DUCKDB.day("timestamp")

    def rollup_streamed():  # as the build streams it: one stream per range of profile keys
        bounds = stacked_build._key_bounds(con, "profiles", None)
        assert (
            daily_rollup.split_stream_rollup(con, "events", "TRUE", rollup_columns, day_sql, bounds)
            is not None
        )

    def rollup_grouped():
        stacked_build._grouped_rollup(con, "events", rollup_columns, "")

    as_of_graph = AsOfVariants(con, loaded.graph, fs, as_of, dates)
    variants = (
        ("handwritten", handwritten),
        ("ours", ours),
        ("ours sql", ours_sql),
        ("ours as of", as_of_graph.single),
        ("stacked", stacked),
        ("stacked as of", as_of_graph.stacked),
        ("rollup streamed", rollup_streamed),
        ("rollup grouped", rollup_grouped),
    )

    # Warm the file cache once so that neither side pays for the first read; then two rounds,
    # each variant timed in each, best of two (first calls also pay for memory the process
    # has not touched yet, which this VM makes slow).
    con.execute("SELECT count(*), sum(revenue) FROM events").fetchall()
    results: dict[str, list[float]] = {}
    split: dict[str, list[dict[str, float]]] = {}  # per variant and round: seconds per phase
    phases = Phases()
    load = [os.getloadavg()[0]]
    peak_ours = 0.0
    for _ in range(2):
        for name, fn in variants:
            phases.take()
            _, seconds = timed(fn)
            results.setdefault(name, []).append(seconds)
            split.setdefault(name, []).append(phases.take())
            print(
                f"  {name:<16}{seconds:8.2f}s  RSS now {current_rss_mib():,.0f} MiB  {split[name][-1]}",
                flush=True,
            )
            if name == "ours" and not peak_ours:
                peak_ours = rss_mib()  # before any stacked build
    load.append(os.getloadavg()[0])
    ours_s, hand_s, eight_s = min(results["ours"]), min(results["handwritten"]), min(results["stacked"])
    # Each build's phases in its faster round.
    best_split = {n: split[n][results[n].index(min(results[n]))] for n in ("ours", "stacked")}
    sql_s = min(results["ours sql"])
    peak_stacked = rss_mib()

    ours_df = con.execute("SELECT * FROM ours").df()
    hand_df = con.execute("SELECT * FROM handwritten").df()
    compare(ours_df, hand_df, "ours vs handwritten")
    del hand_df
    compare(ours_df, con.execute("SELECT * FROM ours_sql").df(), "ours vs the registry's SQL")
    assert dates[-1] == as_of
    stacked_df = con.execute(f"SELECT * FROM stacked WHERE as_of = DATE '{as_of}'").df()
    compare(ours_df, stacked_df, "ours vs the same date in the stacked snapshots")
    del stacked_df
    compare(*as_of_graph.frames_at_as_of(), "ours vs stacked, over the graph at as_of")
    as_of_s, eight_as_of_s = min(results["ours as of"]), min(results["stacked as of"])

    # Spilling: the same build with DuckDB held to a small memory limit.
    spill_con = event_jobs.load_events(
        ingested,
        config.model_copy(
            update={
                "engine": EngineConfig(memory_limit=args.memory_limit, temp_directory=str(DATA / "spill"))
            }
        ),
    ).con
    _, spill_s = timed(
        lambda: spill_con.execute(f"CREATE TEMP TABLE s AS {sql_compiler.snapshot_sql(fs, as_of)}")
    )
    spill_con.close()

    # What the engine holds goes before pandas loads 35M events of its own.
    for table in ("ours", "ours_sql", "handwritten", "stacked", "ours_as_of", "stacked_as_of"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    pandas_df, pandas_s = timed(lambda: pandas_features(ingested / "events.parquet", as_of, fs.lookback_days))
    compare(ours_df, pandas_df, "ours vs pandas")

    rows = [
        ("ours (rollup -> compiled pass)", ours_s),
        ("ours (registry -> SQL)", sql_s),
        ("hand-written DuckDB query", hand_s),
        ("plain pandas", pandas_s),
        ("ours, 8 stacked snapshots", eight_s),
        (f"ours by SQL, memory limit {args.memory_limit}", spill_s),
    ]
    print(
        f"\n{events:,} events, {len(ours_df):,} profiles at {as_of}, {len(CORE)} core features "
        f"(plan: {sql_compiler.choose_plan(fs)}), {stacked_rows:,} stacked rows"
    )
    print(f"{'variant':<34}{'seconds':>9}{'x handwritten':>15}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>9.2f}{seconds / hand_s:>15.2f}")
    print(
        f"8 snapshots / 1 snapshot: {eight_s / ours_s:.2f} (/ 1 by SQL: {eight_s / sql_s:.2f})   "
        f"pandas / ours: {pandas_s / ours_s:.2f}   "
        f"peak RSS after our build: {peak_ours:,.0f} MiB, after the stacked build: {peak_stacked:,.0f} MiB"
    )
    print(
        f"phases (s): one snapshot {best_split['ours']}, 8 stacked {best_split['stacked']}; "
        f"load average {load[0]:.1f} before the timed rounds, {load[1]:.1f} after"
    )
    streamed_s, grouped_s = min(results["rollup streamed"]), min(results["rollup grouped"])
    print(
        f"daily rollup streamed / grouped: {streamed_s / grouped_s:.2f} "
        f"({streamed_s:.2f}s / {grouped_s:.2f}s)"
    )
    profiles = con.execute("SELECT count(*) FROM profiles").fetchone()[0]
    changed = as_of_graph.changed
    print(
        f"over the graph at each as-of date / over the final graph: 1 snapshot {as_of_s / ours_s:.2f}, "
        f"8 stacked snapshots {eight_as_of_s / eight_s:.2f}; profiles attributed again per date "
        f"(of {profiles:,}): {', '.join(f'{d}: {n:,}' for d, n in changed.items())}"
    )
    print(
        json.dumps(
            {
                "events": events,
                "profiles": len(ours_df),
                "features": len(CORE),
                "seconds": round(ours_s, 3),
                "handwritten_seconds": round(hand_s, 3),
                "pandas_seconds": round(pandas_s, 3),
                "ratio": round(ours_s / hand_s, 3),
                "sql_seconds": round(sql_s, 3),
                "sql_ratio": round(sql_s / hand_s, 3),
                "pandas_ratio": round(pandas_s / ours_s, 3),
                "snapshots_seconds": round(eight_s, 3),
                "snapshots_ratio": round(eight_s / ours_s, 3),
                "snapshots_sql_ratio": round(eight_s / sql_s, 3),
                "rollup_streamed_seconds": round(streamed_s, 3),
                "rollup_grouped_seconds": round(grouped_s, 3),
                "spill_seconds": round(spill_s, 3),
                "memory_limit": args.memory_limit,
                "peak_rss_mib": round(peak_ours),
                "peak_rss_stacked_mib": round(peak_stacked),
                "as_of_graph_seconds": round(as_of_s, 3),
                "as_of_graph_ratio": round(as_of_s / ours_s, 3),
                "snapshots_as_of_graph_seconds": round(eight_as_of_s, 3),
                "snapshots_as_of_graph_ratio": round(eight_as_of_s / eight_s, 3),
                "changed_profiles": {str(d): n for d, n in changed.items()},
                "profiles_total": profiles,
                "ingest_seconds": round(ingest_seconds, 3) if ingest_seconds else None,
                "ingest_point_in_time": extras,
                "runs": {name: [round(x, 3) for x in xs] for name, xs in results.items()},
                "phases": best_split,
                "load_average": [round(x, 1) for x in load],
            }
        )
    )


if __name__ == "__main__":
    main()
