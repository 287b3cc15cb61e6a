"""Speed of `measure`'s figures on 1M memberships, and of uplift scoring against propensity scoring.

    python benchmarks/measure.py [--profiles N] [--resamples B] [--fit-profiles F] [--learners t,x]

Draws (untimed) an in-memory campaign of N members (default 1M: arms, conversions, revenue,
a pre-period of purchases and revenue; :func:`features.synthetic.campaigns.in_memory_campaign`)
and times:

  * measure: ``pipeline.jobs.measure.lift_table`` over them (one segment, the two pre-period
    covariates, plus a breakdown by a five-level trait: six comparisons in all), B resamples,
    every figure with its interval and the regression-adjusted estimate;
  * textbook: the raw absolute lift alone, resampling rows with replacement once per resample
    (``rng.integers`` indices, then the two arm means), timed over 20 resamples and scaled to B
    (table only: how far the measure job is from the naive bootstrap);
  * scoring: ``benchmarks/uplift.py``'s comparison on N profiles of a simulated randomised
    campaign (41 features): an uplift model (T- and X-learners, the better validation Qini kept)
    and a propensity model, both fitted on the first F people (default 200,000), then each
    scores all N profiles through ``models.scoring.score_batch`` (probability, score, bucket,
    top-5 factors; the uplift model also ``uplift`` and factors of the uplift), the best of
    ``--repeats`` passes. The feature build, which both scoring jobs share, is left out: the
    ratio is the scoring step's own, the strictest one (end to end it is closer to 1).

Prints a table, then one JSON line with exactly ``profiles``, ``measure_seconds``,
``uplift_score_seconds``, ``propensity_score_seconds``, ``ratio`` (uplift / propensity scoring)
and ``peak_rss_mib`` (the process's, over all of it).
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

try:  # run as a script (python benchmarks/measure.py) or imported as benchmarks.measure
    from uplift import print_scoring, scoring_comparison
except ImportError:  # pragma: no cover
    from benchmarks.uplift import print_scoring, scoring_comparison


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
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--fit-profiles", type=int, default=200_000, help="people the scoring models fit on")
    parser.add_argument(
        "--learners", default="t,x", help="uplift learners fitted (best validation Qini kept)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="scoring passes per model (the best kept)")
    args = parser.parse_args()
    frame = members_frame(args.profiles, seed=1)
    start = time.perf_counter()
    table = lift_table(frame, ["pre_purchases", "pre_revenue"], ["tier"], args.resamples, seed=0)
    ours = time.perf_counter() - start
    textbook = textbook_seconds(frame, args.resamples)
    del frame
    scoring = scoring_comparison(
        args.profiles, args.fit_profiles, repeats=args.repeats, learners=tuple(args.learners.split(","))
    )
    whole = table[(table["breakdown"] == "")].set_index("metric")
    print(f"{'step':<44}{'seconds':>10}")
    print(f"{'measure (all figures, 6 comparisons, B=' + str(args.resamples) + ')':<44}{ours:>10.2f}")
    print(f"{'textbook bootstrap (raw lift only, est.)':<44}{textbook:>10.2f}")
    for metric in ("absolute_lift", "adjusted_absolute_lift", "incremental_revenue"):
        row = whole.loc[metric]
        print(f"  {metric:<30} {row['estimate']:>12.4g}  [{row['low']:.4g}, {row['high']:.4g}]")
    print_scoring(scoring)
    result = {
        "profiles": args.profiles,
        "measure_seconds": round(ours, 3),
        "uplift_score_seconds": scoring["uplift_score_seconds"],
        "propensity_score_seconds": scoring["propensity_score_seconds"],
        "ratio": scoring["ratio"],
        "peak_rss_mib": round(rss_mib()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
