"""How fast `generate` produces 1M profiles / ~20M events on this machine.

    python benchmarks/generate.py [--profiles N] [--days D]

The baseline in the same run is the time to write the same events table with pyarrow
alone (generation cost = ours - writing). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from propensity.features.simulator import GeneratorSettings
from propensity.features.synthetic_io import generate

DATA = Path(__file__).parent / ".data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--ground-truth", action="store_true", help="also write the daily probabilities")
    args = parser.parse_args()
    out = DATA / f"luma_{args.profiles}"
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    summary = generate(
        GeneratorSettings(profiles=args.profiles, days=args.days, ground_truth=args.ground_truth), out
    )
    seconds = time.perf_counter() - start
    table = pq.read_table(out / "events")
    start = time.perf_counter()
    pq.write_table(table, DATA / "rewrite.parquet", compression="zstd")
    write_seconds = time.perf_counter() - start
    (DATA / "rewrite.parquet").unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"profiles {args.profiles:,}  events {summary.events:,}  generate {seconds:.1f}s  "
        f"(writing alone {write_seconds:.1f}s)  peak RSS {peak:,.0f} MiB"
    )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "events": summary.events,
                "seconds": round(seconds, 2),
                "write_only_seconds": round(write_seconds, 2),
                "ratio": round(seconds / write_seconds, 2),
                "peak_rss_mib": round(peak),
            }
        )
    )


if __name__ == "__main__":
    main()
