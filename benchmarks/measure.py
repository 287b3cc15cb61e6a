"""Speed of `measure`'s figures on 1M memberships: every figure with 1,000 bootstrap resamples and
the regression-adjusted estimate, against the textbook bootstrap in the same run.

    python benchmarks/measure.py [--profiles N] [--resamples B]

Draws (untimed) an in-memory campaign of N members (default 1M: arms, conversions, revenue,
a pre-period of purchases and revenue; :func:`features.synthetic.campaigns.in_memory_campaign`)
and times:

  * ours: ``pipeline.jobs.measure.lift_table`` over them (one segment, the two pre-period
    covariates, plus a breakdown by a five-level trait: six comparisons in all), B resamples;
  * textbook: the raw absolute lift alone, resampling rows with replacement once per resample
    (``rng.integers`` indices, then the two arm means), timed over 20 resamples and scaled to B.

Prints a table, then one JSON line with ``profiles``, ``measure_seconds``, ``peak_rss_mib``,
``textbook_seconds`` (estimated for B), ``ratio`` (textbook / ours). The uplift work adds
``uplift_score_seconds`` and ``propensity_score_seconds`` (and its own ratio) beside them:
see the ``extra`` dict below.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd

from propensity.features.synthetic.campaigns import in_memory_campaign
from propensity.pipeline.jobs.measure import lift_table


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def members_frame(profiles: int, seed: int) -> pd.DataFrame:
    truth = in_memory_campaign(profiles, seed)
    return pd.DataFrame(
        {
            "profile_id": np.arange(profiles).astype(str),
            "segment": "yoga_campaign",
            "arm": np.where(truth.treated, "targeted", "holdout"),
            "converted": truth.converted,
            "revenue": truth.revenue,
            "pre_purchases": truth.pre_purchases,
            "pre_revenue": truth.pre_revenue,
            "tier": np.array(["none", "bronze", "silver", "gold", "platinum"])[np.arange(profiles) % 5],
        }
    )


def textbook_seconds(frame: pd.DataFrame, resamples: int, timed: int = 20) -> float:
    y = frame["converted"].to_numpy(np.float64)
    targeted = (frame["arm"] == "targeted").to_numpy()
    yt, yh = y[targeted], y[~targeted]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(timed):
        _ = yt[rng.integers(0, len(yt), len(yt))].mean() - yh[rng.integers(0, len(yh), len(yh))].mean()
    return (time.perf_counter() - start) / timed * resamples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    frame = members_frame(args.profiles, seed=1)
    start = time.perf_counter()
    table = lift_table(frame, ["pre_purchases", "pre_revenue"], ["tier"], args.resamples, seed=0)
    ours = time.perf_counter() - start
    textbook = textbook_seconds(frame, args.resamples)
    whole = table[(table["breakdown"] == "")].set_index("metric")
    print(f"{'step':<44}{'seconds':>10}")
    print(f"{'measure (all figures, 6 comparisons, B=' + str(args.resamples) + ')':<44}{ours:>10.2f}")
    print(f"{'textbook bootstrap (raw lift only, est.)':<44}{textbook:>10.2f}")
    for metric in ("absolute_lift", "adjusted_absolute_lift", "incremental_revenue"):
        row = whole.loc[metric]
        print(f"  {metric:<30} {row['estimate']:>12.4g}  [{row['low']:.4g}, {row['high']:.4g}]")
    result = {
        "profiles": args.profiles,
        "resamples": args.resamples,
        "measure_seconds": round(ours, 3),
        "textbook_seconds": round(textbook, 3),
        "ratio": round(textbook / ours, 1),
        "peak_rss_mib": round(rss_mib()),
    }
    # The uplift work adds here: "uplift_score_seconds", "propensity_score_seconds" and its ratio.
    extra: dict[str, float] = {}
    print(json.dumps(result | extra))


if __name__ == "__main__":
    main()
