"""Scoring's feature build in profile partitions: the events split once into one folder per
partition against every partition rescanning the events (what scoring did before), same run.

    python benchmarks/score_partitions.py [--profiles 1000000] [--features all|core]

Reuses (or generates and ingests) the data of ``benchmarks/features.py``. At the data's end,
over the identity graph as of that date (what the scoring job reads), for the features a model
reads (``all``: every registry feature, 8 partitions by default; ``core``: the 35 core features of
``benchmarks/references.py``), each partition's feature rows are streamed in Arrow batches and
dropped, as the scoring job consumes them:

  * rescan: each partition's features straight off the events whose ``hash(profile_id)`` falls
    in it (every partition reads all events);
  * split: ``features.duckdb.scoring.partition_events`` (one scan of the events, writing the
    lookback's events, only the columns the features read, to one Parquet folder per partition)
    and each partition's features from its folder.

Both are checked to give the same rows and values. Peak RSS is measured for each in a process of
its own. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from propensity.core.config import ProjectConfig
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import arrow_batches, relation_columns
from propensity.features.duckdb.scoring import partition_events, partitions_for
from propensity.pipeline.jobs.events import feature_set, load_events

try:  # run as a script or imported as benchmarks.score_partitions
    from data import DATA, ensure_ingested, in_child
    from references import CORE
except ImportError:  # pragma: no cover
    from benchmarks.data import DATA, ensure_ingested, in_child
    from benchmarks.references import CORE


def build(ingested: Path, variant: str, features: str, partitions: int | None) -> dict:
    """Child process: one variant's partitioned build, its rows streamed in Arrow batches and
    reduced to (profile_id, hash of the row); seconds, rows and this process's peak RSS."""
    config = ProjectConfig()
    loaded = load_events(ingested, config)
    con = loaded.con
    as_of = loaded.data_end()
    fs = feature_set(loaded, config, before=as_of)
    if features == "core":
        fs = fs.select(include=CORE)
    sources = loaded.sources(as_of)
    parts = partitions or partitions_for(con, sources.profiles, len(fs.features))
    con.execute("SELECT count(*), sum(revenue) FROM events").fetchall()  # warm the file cache
    scratch = Path(tempfile.mkdtemp(dir=DATA))
    start = time.perf_counter()
    if variant == "rescan":
        relations = [
            f"(SELECT * FROM {sources.events} WHERE hash(profile_id) % {parts} = {p})" for p in range(parts)
        ]
    else:
        events_of = partition_events(con, fs, as_of, sources.events, parts, scratch / "events")
        relations = [e for e in map(events_of, range(parts)) if e is not None]
    split = time.perf_counter() - start
    hashes = []
    for events in relations:
        sql = snapshot_sql(
            fs,
            as_of,
            relation_columns(con, sources.profiles),
            events=events,
            profiles=sources.profiles,
            ordered=False,
        )
        for batch in arrow_batches(con, f"SELECT profile_id, hash(f) AS h FROM ({sql}) f", 100_000):
            hashes.append(pa.Table.from_batches([batch]))
    seconds = time.perf_counter() - start
    shutil.rmtree(scratch)
    table = pa.concat_tables(hashes).sort_by("profile_id")
    return {
        "seconds": seconds,
        "split_seconds": split,
        "rows": table.num_rows,
        "digest": hashlib.sha256(
            "\n".join(table["profile_id"].to_pylist()).encode() + table["h"].to_numpy().tobytes()
        ).hexdigest(),
        "features": len(fs.features),
        "measures": len(fs.measures),
        "partitions": parts,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--features", choices=["all", "core"], default="all")
    parser.add_argument("--partitions", type=int, default=None, help="default: the scoring job's choice")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _, ingested, _ = ensure_ingested(args.profiles, args.days, ProjectConfig())
    runs: dict[str, list[dict]] = {"rescan": [], "split": []}
    for _ in range(args.rounds):
        for variant in runs:
            run = in_child(build, ingested, variant, args.features, args.partitions)
            runs[variant].append(run)
            print(
                f"  {variant:<8}{run['seconds']:8.2f}s (split {run['split_seconds']:.2f}s) "
                f"peak RSS {run['peak_rss_mib']:,.0f} MiB",
                flush=True,
            )
    old, new = (min(runs[v], key=lambda r: r["seconds"]) for v in ("rescan", "split"))
    assert (old["rows"], old["digest"]) == (new["rows"], new["digest"]), "the two builds differ"
    print(
        f"\n{new['rows']:,} profiles, {new['features']} features, {new['measures']} measures, "
        f"{new['partitions']} partitions"
    )
    print(f"{'variant':<34}{'seconds':>9}{'x rescan':>10}{'peak MiB':>10}")
    for name, r in (("rescan per partition (before)", old), ("events split once (now)", new)):
        print(
            f"{name:<34}{r['seconds']:>9.2f}{r['seconds'] / old['seconds']:>10.2f}{r['peak_rss_mib']:>10,.0f}"
        )
    print(
        json.dumps(
            {
                "profiles": new["rows"],
                "features": new["features"],
                "partitions": new["partitions"],
                "rescan_seconds": round(old["seconds"], 3),
                "split_seconds": round(new["seconds"], 3),
                "split_write_seconds": round(new["split_seconds"], 3),
                "ratio": round(new["seconds"] / old["seconds"], 3),
                "rescan_peak_rss_mib": round(old["peak_rss_mib"]),
                "split_peak_rss_mib": round(new["peak_rss_mib"]),
                "runs": {v: [round(r["seconds"], 3) for r in rs] for v, rs in runs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
