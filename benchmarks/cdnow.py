"""CDNOW through the command line: the written probabilities against what happened.

    python benchmarks/cdnow.py [--every 1] [--trials N]

Real CD purchases (the ``lifetimes`` package's CDNOW_master.txt, 23,570 customers, to
1998-06-30) as purchase events; ``propensity ingest``, ``train`` with a three-line
repeat-purchase config on the data before 1997-10-01, ``score`` at 1997-10-01; then AUC,
average precision and Brier of the written probabilities for a purchase within 90 days,
each with a bootstrap 95 % interval and the number of positives, beside logistic regression
on log RFM (one snapshot), LightGBM on RFM over stacked weekly snapshots, BG/NBD and recency
fitted in the same run on the same customers, and the paired intervals of the model minus
each. ``--every N`` keeps every N-th customer.
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
