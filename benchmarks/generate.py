"""How fast `generate` produces 1M profiles / ~20-30M events on this machine.

    python benchmarks/generate.py [--profiles N] [--days D] [--difficulty easy|realistic]
                                  [--scenario omnichannel|purchase_only] [--ground-truth]
                                  [--chunk-profiles C]

The baseline in the same run is the time to write the same events table with pyarrow
alone (generation cost = ours - writing). CPU seconds (user + system) are reported too:
on a shared machine they move less than wall time. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from propensity.features.synthetic import GeneratorSettings, generate

DATA = Path(__file__).parent / ".data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--ground-truth", action="store_true", help="also write the ground truth")
    parser.add_argument("--difficulty", default="realistic", choices=["easy", "realistic"])
    parser.add_argument("--scenario", default="omnichannel", choices=["omnichannel", "purchase_only"])
    parser.add_argument(
        "--chunk-profiles",
        type=int,
        default=GeneratorSettings.chunk_profiles,
        help="people simulated at a time (peak memory follows it)",
    )
    args = parser.parse_args()
    out = DATA / f"luma_{args.profiles}"
    if out.exists():
        shutil.rmtree(out)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    settings = GeneratorSettings(
        profiles=args.profiles,
        days=args.days,
        ground_truth=args.ground_truth,
        difficulty=args.difficulty,
        scenario=args.scenario,
        chunk_profiles=args.chunk_profiles,
    )
    summary = generate(settings, out)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    table = pq.read_table(out / "events")
    start = time.perf_counter()
    pq.write_table(table, DATA / "rewrite.parquet", compression="zstd")
    write_seconds = time.perf_counter() - start
    (DATA / "rewrite.parquet").unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.difficulty} {args.scenario}: profiles {args.profiles:,}  events {summary.events:,}  "
        f"generate {seconds:.1f}s ({cpu_seconds:.1f} CPU s)  (writing alone {write_seconds:.1f}s)  "
        f"peak RSS {peak:,.0f} MiB"
    )
    print(
        json.dumps(
            {
                "difficulty": args.difficulty,
                "scenario": args.scenario,
                "profiles": args.profiles,
                "events": summary.events,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                "write_only_seconds": round(write_seconds, 2),
                "ratio": round(seconds / write_seconds, 2),
                "peak_rss_mib": round(peak),
                "chunk_profiles": args.chunk_profiles,
            }
        )
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
