"""One feature snapshot on local Spark against DuckDB, on the same ingested events, same run.

    python benchmarks/spark_features.py [--profiles N] [--master local[2]] [--driver-memory 6g]

Generates (or reuses) N synthetic profiles (default 1M, ~20M events) and ingests them once
with DuckDB, then builds the full registry's feature table at the day after the data:

  * duckdb: ``sql_compiler.snapshot_sql`` (the plan DuckDB picks), materialised as a table;
  * spark: ``spark_features.snapshot`` (the daily-rollup plan), executed to a no-op sink;
    twice: the first run pays Spark's code generation for a query of ~300 aggregates, the
    second is what every later run of the same query costs.

Spark in local mode on a couple of cores is expected to be slower than DuckDB: it pays a JVM,
shuffles through local disk and row-at-a-time operators, for the ability to add machines.
Both results are checked to agree (row count and every numeric column's sum). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from propensity.core.config import EngineConfig, ProjectConfig
from propensity.features.build import event_queries, sql_compiler
from propensity.features.connection import relation_columns
from propensity.features.spark import features as sf
from propensity.features.spark.session import spark_session
from propensity.features.synthetic.world import GeneratorSettings
from propensity.features.synthetic.writer import generate
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs

DATA = Path(__file__).parent / ".data"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def prepare(profiles: int, days: int) -> Path:
    """The DuckDB ingest of N generated profiles, built once and reused."""
    raw, ingested = DATA / f"luma_{profiles}", DATA / f"ingested_{profiles}"
    if not raw.exists():
        print(f"generating {profiles:,} profiles ...", flush=True)
        generate(GeneratorSettings(profiles=profiles, days=days, ground_truth=False), raw)
    manifest = ingested / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("format") != ingest_jobs.INGEST_FORMAT:
        print("ingesting ...", flush=True)
        ingest_jobs.ingest(raw, ingested, ProjectConfig(), on_bad_rows="quarantine")
    return ingested


def numeric_sums(columns: list[str], run) -> dict[str, float]:
    """Sum of every numeric feature column, from a query ``run(sql_select_list)``."""
    row = run(", ".join(f"CAST(sum({c}) AS DOUBLE)" for c in columns))
    return dict(zip(columns, row, strict=True))


def difference(a: float | None, b: float | None) -> float:
    """Relative difference of two sums; a column NULL in both (no values) agrees."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    return abs(a - b) / max(1.0, abs(a))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g", help="local mode runs every task in the driver")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    args = parser.parse_args()

    ingested = prepare(args.profiles, args.days)
    config = ProjectConfig()
    loaded = event_jobs.load_events(ingested, config)
    con = loaded.con
    events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    as_of = event_queries.data_end(con)
    fs = event_jobs.feature_set(loaded, config, as_of)
    # Both engines read the profiles as the identity graph knew them at as_of.
    sources = loaded.sources(as_of)
    duck_sql = sql_compiler.snapshot_sql(
        fs, as_of, relation_columns(con, sources.profiles), events=sources.events, profiles=sources.profiles
    )
    _, duck_seconds = timed(lambda: con.execute(f"CREATE TEMP TABLE duck_features AS {duck_sql}"))
    duck_rows = con.execute("SELECT count(*) FROM duck_features").fetchall()[0][0]

    engine = EngineConfig(
        name="spark",
        spark={
            "master": args.master,
            "shuffle_partitions": args.shuffle_partitions,
            "conf": {
                "spark.ui.enabled": False,
                "spark.ui.showConsoleProgress": False,
                "spark.driver.memory": args.driver_memory,
            },
        },
    )
    spark, session_seconds = timed(lambda: spark_session(engine))
    spark.sparkContext.setLogLevel("ERROR")
    spark_config = ProjectConfig(engine=engine)
    spark_sources = event_jobs.load_events(ingested, spark_config).sources(as_of)

    def snapshot():
        return sf.snapshot(spark, fs, as_of, events=spark_sources.events, profiles=spark_sources.profiles)

    def spark_run() -> None:
        snapshot().write.format("noop").mode("overwrite").save()

    _, spark_seconds = timed(spark_run)
    _, spark_warm_seconds = timed(spark_run)
    print(
        f"duckdb {duck_seconds:.2f}s, spark {spark_seconds:.2f}s then {spark_warm_seconds:.2f}s", flush=True
    )

    # Agreement: rows and the sum of every numeric feature.
    snapshot().createOrReplaceTempView("spark_features")
    spark_rows = spark.table("spark_features").count()
    numeric = [
        row[0]
        for row in con.execute("DESCRIBE duck_features").fetchall()
        if row[1].split("(")[0] in NUMERIC_TYPES
    ]
    duck_sums = numeric_sums(numeric, lambda s: con.execute(f"SELECT {s} FROM duck_features").fetchall()[0])
    spark_sums = numeric_sums(numeric, lambda s: spark.sql(f"SELECT {s} FROM spark_features").first())
    worst = max(difference(duck_sums[c], spark_sums[c]) for c in numeric)
    agree = spark_rows == duck_rows and worst < 1e-9

    cores = os.cpu_count()
    print(f"profiles {args.profiles:,}  events {events:,}  as_of {as_of}  features {len(fs.names())}")
    print(f"{'engine':<32}{'seconds':>10}{'x duckdb':>10}")
    print(f"{'duckdb (snapshot_sql)':<32}{duck_seconds:>10.2f}{1:>10.2f}")
    first = f"spark {args.master}, first run"
    print(f"{first:<32}{spark_seconds:>10.2f}{spark_seconds / duck_seconds:>10.2f}")
    print(
        f"{'spark ' + args.master + ', again':<32}{spark_warm_seconds:>10.2f}"
        f"{spark_warm_seconds / duck_seconds:>10.2f}"
    )
    print(f"{'spark session start':<32}{session_seconds:>10.2f}")
    print(
        f"rows: duckdb {duck_rows:,}, spark {spark_rows:,}; numeric columns' sums agree to "
        f"{worst:.1e} (relative): {'yes' if agree else 'NO'}; {cores} cores"
    )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "events": events,
                "as_of": str(as_of),
                "features": len(fs.names()),
                "duckdb_seconds": round(duck_seconds, 2),
                "spark_seconds": round(spark_seconds, 2),
                "spark_warm_seconds": round(spark_warm_seconds, 2),
                "spark_session_seconds": round(session_seconds, 2),
                "ratio": round(spark_seconds / duck_seconds, 2),
                "warm_ratio": round(spark_warm_seconds / duck_seconds, 2),
                "master": args.master,
                "cores": cores,
                "agree": agree,
            }
        )
    )


NUMERIC_TYPES = {"INTEGER", "BIGINT", "DOUBLE", "DECIMAL", "SMALLINT", "HUGEINT", "FLOAT"}

if __name__ == "__main__":
    main()
