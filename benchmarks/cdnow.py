"""CDNOW through the command line: the written probabilities against what happened.

    python benchmarks/cdnow.py [--every 1] [--trials N]

Real CD purchases (the ``lifetimes`` package's CDNOW_master.txt, 23,570 customers, to
1998-06-30) as purchase events; ``propensity ingest``, ``train`` with a three-line
repeat-purchase config on the data before 1997-10-01, ``score`` at 1997-10-01; then AUC,
average precision and Brier of the written probabilities for a purchase within 90 days,
each with a bootstrap 95 % interval and the number of positives, beside logistic regression
on log RFM (one snapshot), LightGBM on RFM over stacked weekly snapshots, BG/NBD and recency
fitted in the same run on the same customers, and the paired intervals of the model minus
each. ``--every N`` keeps every N-th customer. ``--check`` (on every customer, the config's
tuning) then checks issue 23's first done-when line and exits 1 naming what missed: better than
logistic RFM on AUC, average precision and Brier at once beyond the paired 95 % interval and
above the issue's figures for it (0.7783 / 0.5052 / 0.1180), and no worse than stacked LightGBM
beyond the paired interval. (The suite's ``tests/test_cdnow.py`` runs every 10th customer.)
The CLI is the one next to this Python (``python`` of another venv runs that venv's code).
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cdnow import AS_OF, HORIZON_DAYS, MODEL_YAML, run_cli  # noqa: E402

DATA = Path(__file__).parent / ".data" / "cdnow"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--every", type=int, default=1, help="keep every n-th customer")
    parser.add_argument("--trials", type=int, help="LightGBM search trials (default: the config's)")
    parser.add_argument("--work", type=Path, default=DATA)
    parser.add_argument("--check", action="store_true", help="check issue 23's line (every customer)")
    args = parser.parse_args()
    if args.check and (args.every != 1 or args.trials):
        parser.error("--check holds on every customer with the config's tuning: no --every, no --trials")
    model_yaml = MODEL_YAML + (f"training: {{tuning: {{trials: {args.trials}}}}}\n" if args.trials else "")
    figures = run_cli(args.work, args.every, model_yaml)
    print(
        f"CDNOW, purchase within {HORIZON_DAYS} days of {AS_OF}: {figures['rows']:,} customers scored, "
        f"{figures['positives']:,} positives; steps {figures['seconds']}"
    )
    print(f"{'':<10}{'AUC':>28}{'average precision':>28}{'Brier':>28}")
    for name in ("model", "logistic", "lightgbm", "bgnbd", "recency"):
        cells = []
        for metric in ("auc", "average_precision", "brier"):
            m = figures[name].get(metric)
            cells.append(f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]" if m else "-")
        print(f"{name:<10}" + "".join(f"{c:>28}" for c in cells))
    for name in ("logistic", "lightgbm", "bgnbd", "recency"):
        diff = figures[f"model-{name}"]
        shown = ", ".join(f"{k} [{v['low']:+.4f}, {v['high']:+.4f}]" for k, v in sorted(diff.items()))
        print(f"model - {name}: {shown}")
    print(json.dumps(figures))
    if args.check:
        missed = issue_23_misses(figures)
        print("issue 23: " + ("; ".join(missed) if missed else "holds"))
        if missed:
            sys.exit(1)


# Issue 23's figures for logistic regression on log RFM on every customer (23,570; 4,177 bought
# within 90 days of 1997-10-01): the written probabilities must do better.
ISSUE_23 = {"auc": 0.7783, "average_precision": 0.5052, "brier": 0.1180}


def issue_23_misses(figures: dict) -> list[str]:
    """What of issue 23's first done-when line the figures miss (empty when it holds)."""
    missed = []
    if (figures["rows"], figures["positives"]) != (23570, 4177):
        missed.append(f"{figures['rows']} rows, {figures['positives']} positives (not every customer)")
    model = figures["model"]
    for metric, figure in ISSUE_23.items():
        value = model[metric]["value"]
        if (value >= figure) if metric == "brier" else (value <= figure):
            missed.append(f"{metric} {value} not beyond the issue's {figure}")
    logistic, lightgbm = figures["model-logistic"], figures["model-lightgbm"]
    for metric in ("auc", "average_precision"):
        if logistic[metric]["low"] <= 0:
            missed.append(f"{metric} not above logistic beyond the interval {logistic[metric]}")
        if lightgbm[metric]["high"] <= 0:
            missed.append(f"{metric} below stacked LightGBM beyond the interval {lightgbm[metric]}")
    if logistic["brier"]["high"] >= 0:
        missed.append(f"brier not below logistic beyond the interval {logistic['brier']}")
    if lightgbm["brier"]["low"] >= 0:
        missed.append(f"brier above stacked LightGBM beyond the interval {lightgbm['brier']}")
    return missed


if __name__ == "__main__":
    main()
