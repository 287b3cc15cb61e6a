"""Model quality on purchase-only data: the registered model vs the baselines, with intervals.

    python benchmarks/models.py [--customers 30000] [--days 730] [--seed 3]
    python benchmarks/models.py --events PATH [--model repeat_purchase] [--as-of YYYY-MM-DD]

Without ``--events``, generates order-only data (the simulator's ``purchase_only`` scenario
when it has one, else ``tests/purchase_data.py``), ingests it and trains the model config
(``repeat_purchase`` by default) with a throw-away MLflow store. With ``--events``, trains on
your own events or ingest directory instead. Prints the test-snapshot table (model, logistic
RFM, recency, BG/NBD, each with a 95 % bootstrap interval), every candidate's validation
figures and the training time. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / ".data"


def generate(out: Path, customers: int, days: int, seed: int) -> str:
    """Order-only events in ``out``; returns which generator wrote them."""
    from propensity.features.synthetic import GeneratorSettings, generate

    try:
        settings = GeneratorSettings(profiles=customers, days=days, seed=seed, scenario="purchase_only")
    except TypeError:  # the simulator has no purchase-only scenario (yet)
        sys.path.insert(0, str(ROOT))
        from tests.purchase_data import write_purchase_only

        write_purchase_only(out, customers, days, seed)
        return "tests/purchase_data.py"
    generate(settings, out)
    return "simulator purchase_only"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--events", type=Path, help="your own events or ingest directory")
    parser.add_argument("--model", default="repeat_purchase", help="model config name or YAML path")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, help="end of the data training may see")
    args = parser.parse_args()
    work = DATA / "models"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"

    from propensity.core.config import ProjectConfig
    from propensity.pipeline.cli.printing import print_metrics
    from propensity.pipeline.jobs import ingest as ingest_jobs
    from propensity.pipeline.jobs import train as model_jobs

    config = ProjectConfig()
    source = "your events"
    events = args.events
    if events is None:
        start = time.perf_counter()
        source = generate(work / "raw", args.customers, args.days, args.seed)
        ingest_jobs.ingest(work / "raw", work / "ingested", config, on_bad_rows="quarantine")
        events = work / "ingested"
        took = time.perf_counter() - start
        print(f"{args.customers:,} customers over {args.days} days ({source}) in {took:.1f}s")
    start = time.perf_counter()
    result = model_jobs.train_model(args.model, events, config, args.as_of)
    seconds = time.perf_counter() - start
    m = result.metrics
    print_metrics(m, f"{args.model}: test snapshot {result.snapshots[-1]}", note=result.selection_reason)
    for family, validation in result.validation.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in validation.items())
        print(f"validation ({family}): {shown}")
    if result.snapshot_plan:
        print(f"snapshot plan: {result.snapshot_plan}")
    print(
        f"chosen {result.model_family}; fit {result.fit_seconds:.1f}s, train job {seconds:.1f}s "
        f"(fit + baselines + intervals + MLflow); {result.rows['train']['rows']:,} training rows"
    )
    figures = {
        "events": source,
        "customers": args.customers if args.events is None else None,
        "model": args.model,
        "chosen": result.model_family,
        "fit_seconds": round(result.fit_seconds, 1),
        "train_job_seconds": round(seconds, 1),
        "test_positives": int(m["test_positives"]),
        "test_rows": int(m["test_rows"]),
        "validation": {f: {k: round(v, 4) for k, v in val.items()} for f, val in result.validation.items()},
    }
    for name, prefix in (
        ("model", "test_"),
        ("logreg", "baseline_logreg_"),
        ("recency", "baseline_recency_"),
    ):
        for metric in ("auc", "average_precision", "brier"):
            if f"{prefix}{metric}" in m:
                figures[f"{name}_{metric}"] = [
                    round(m[f"{prefix}{metric}"], 4),
                    round(m[f"{prefix}{metric}_ci_low"], 4),
                    round(m[f"{prefix}{metric}_ci_high"], 4),
                ]
    for metric in ("auc", "average_precision", "brier"):
        if f"baseline_bgnbd_{metric}" in m:
            figures[f"bgnbd_{metric}"] = [
                round(m[f"baseline_bgnbd_{metric}"], 4),
                round(m[f"baseline_bgnbd_{metric}_ci_low"], 4),
                round(m[f"baseline_bgnbd_{metric}_ci_high"], 4),
            ]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
