"""Scoring's feature build in profile partitions: one daily rollup for all partitions against
every partition rescanning the events (what scoring did before), in the same run.

    python benchmarks/score_partitions.py [--profiles 1000000] [--features all|core]

Reuses (or generates and ingests) the data of ``benchmarks/features.py``. At the data's end,
over the identity graph as of that date (what the scoring job reads), for the features a model
reads (``all``: every registry feature, 8 partitions by default; ``core``: the 35 core features of
``benchmarks/references.py``), each partition's feature rows are streamed in Arrow batches and
dropped, as the scoring job consumes them:

  * rescan: each partition's features straight off the events whose ``hash(profile_id)`` falls
    in it (every partition reads all events);
  * rollup: ``features.duckdb.scoring.partition_rollup`` (one scan of the events) and each
    partition's features from its slice of the rollup.

Both are checked to give the same rows. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import pyarrow as pa

from propensity.core.config import ProjectConfig
from propensity.features.build.sql_compiler import rollup_snapshot_sql, snapshot_sql
from propensity.features.connection import arrow_batches
from propensity.features.duckdb.scoring import PARTITION_ROLLUP, partition_rollup, partitions_for
from propensity.pipeline.jobs.events import feature_set, load_events

try:  # run as a script or imported as benchmarks.score_partitions
    from data import ensure_ingested
    from references import CORE
except ImportError:  # pragma: no cover
    from benchmarks.data import ensure_ingested
    from benchmarks.references import CORE


def drain(con, queries) -> tuple[int, float, pa.Table]:
    """Rows streamed from each query in turn, seconds, and a checksum table of them."""
    start, rows, sums = time.perf_counter(), 0, []
    for sql in queries:
        for batch in arrow_batches(con, sql, 100_000):
            rows += batch.num_rows
            sums.append(pa.Table.from_batches([batch]).select(["profile_id", "days_since_last_event"]))
    return rows, time.perf_counter() - start, pa.concat_tables(sums).sort_by("profile_id")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--features", choices=["all", "core"], default="all")
    parser.add_argument("--partitions", type=int, default=None, help="default: the scoring job's choice")
    args = parser.parse_args()
    config = ProjectConfig()
    _, ingested, _ = ensure_ingested(args.profiles, args.days, config)
    loaded = load_events(ingested, config)
    con = loaded.con
    as_of = loaded.data_end()
    fs = feature_set(loaded, config, before=as_of)
    if args.features == "core":
        fs = fs.select(include=CORE)
    sources = loaded.sources(as_of)
    parts = args.partitions or partitions_for(con, sources.profiles, len(fs.features))
    columns = sources.profiles
    con.execute("SELECT count(*), sum(revenue) FROM events").fetchall()  # warm the file cache

    def rescan():
        def sql(part: int) -> str:
            events = f"(SELECT * FROM {sources.events} WHERE hash(profile_id) % {parts} = {part})"
            return snapshot_sql(fs, as_of, con, events=events, profiles=columns, ordered=False)

        return drain(con, (sql(p) for p in range(parts)))

    def rollup():
        start = time.perf_counter()
        relation = partition_rollup(con, fs, as_of, sources.events, parts)
        built = time.perf_counter() - start
        rows, seconds, table = drain(
            con,
            (
                rollup_snapshot_sql(fs, as_of, relation(p), con, profiles=columns, ordered=False)
                for p in range(parts)
            ),
        )
        con.execute(f"DROP TABLE {PARTITION_ROLLUP}")
        return rows, built + seconds, table, built

    runs: dict[str, list[float]] = {"rescan": [], "rollup": []}
    rollup_build = []
    for _ in range(2):
        old_rows, old_s, old_table = rescan()
        runs["rescan"].append(old_s)
        print(f"  rescan {old_s:8.2f}s", flush=True)
        new_rows, new_s, new_table, built = rollup()
        runs["rollup"].append(new_s)
        rollup_build.append(built)
        print(f"  rollup {new_s:8.2f}s (of which the rollup {built:.2f}s)", flush=True)
    assert old_rows == new_rows and old_table.equals(new_table), "the two builds differ"
    old_s, new_s = min(runs["rescan"]), min(runs["rollup"])
    print(
        f"\n{new_rows:,} profiles, {len(fs.features)} features, {len(fs.measures)} measures, "
        f"{parts} partitions"
    )
    print(f"{'variant':<34}{'seconds':>9}{'x rescan':>10}")
    print(f"{'rescan per partition (before)':<34}{old_s:>9.2f}{1:>10.2f}")
    print(f"{'one rollup, sliced':<34}{new_s:>9.2f}{new_s / old_s:>10.2f}")
    print(
        json.dumps(
            {
                "profiles": new_rows,
                "features": len(fs.features),
                "partitions": parts,
                "rescan_seconds": round(old_s, 3),
                "rollup_seconds": round(new_s, 3),
                "rollup_build_seconds": round(min(rollup_build), 3),
                "ratio": round(new_s / old_s, 3),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
