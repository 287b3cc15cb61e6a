"""Training at scale: upsell and conversion on 1M generated profiles, end to end, sampled.

    flock /work/bigrun.lock python benchmarks/training.py [--profiles 1000000]
        [--compare-profiles 150000] [--sample-rows 1500000] [--trials 12]

Each model is trained by ``train_model`` (what ``propensity train`` runs) in a fresh process, so
its peak RSS is the job's alone: 8 snapshots 21 days apart (the models' configs, the default
row budget ``max_rows``: it counts the rows the sample builds, so all 8 are kept), labels first
and features built only for the rows ``training.sampling`` chooses (every row that may be
positive, the held-out test and validation profiles whole, a seeded sample of the other
profiles' negatives weighted 1 / rate). Above 1M profiles (``--profiles 5000000``) the test and
validation profile fractions shrink in proportion (0.06 at 5M), so the whole parts of the sample
hold about as many rows as at 1M; the data beyond one generator chunk are generated 300k
profiles at a time (``benchmarks/data.py``).

Quality: on ``--compare-profiles`` (a dataset small enough to build every row), upsell is trained
twice on the same data, unsampled (``sampling.rows`` above every estimate) and sampled at the
rate the large run uses (``--sample-rows`` scaled by the ratio of profiles); both are tested on
the same whole test snapshot, so the sampled model's test AUC either lies inside the unsampled
model's bootstrap interval or it does not.

Prints a table; the last line is one JSON object with ``profiles``, ``snapshots``,
``training_rows``, ``seconds``, ``peak_rss_mib`` (the slowest / largest of the models), per
model figures under ``models`` and the comparison under ``compare``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import yaml

from propensity.core.config import ProjectConfig

try:  # run as a script (python benchmarks/training.py) or imported as benchmarks.training
    from data import DATA, ensure_ingested, in_child
except ImportError:  # pragma: no cover
    from benchmarks.data import DATA, ensure_ingested, in_child


def print_phases(phases: dict[str, dict]) -> None:
    """The phases' table of ``benchmarks/training_phases.py``."""
    try:
        from training_phases import print_phases as show
    except ImportError:  # pragma: no cover
        from benchmarks.training_phases import print_phases as show
    show(phases)


WORK = DATA / "training"
# Beyond this many profiles the held-out test and validation profiles (kept whole by the sample)
# shrink in proportion, so they stay the size they have at 1M instead of outgrowing the budget.
WHOLE_PROFILES = 1_000_000
MODELS = ("upsell", "conversion")
UNSAMPLED = 10**12  # sampling.rows above any estimate: every row is built


def model_yaml(
    name: str, out: Path, sample_rows: int, trials: int, suffix: str = "", profiles: int = WHOLE_PROFILES
) -> Path:
    """The repository's model config with the benchmark's sampling budget and trials; above
    ``WHOLE_PROFILES`` profiles, test and validation profile fractions scaled down to hold as many
    profiles as at ``WHOLE_PROFILES`` (0.06 each at 5M, from 0.3)."""
    config = yaml.safe_load(
        (Path(__file__).parent.parent / "configs" / "models" / f"{name}.yaml").read_text()
    )
    config["name"] = f"{name}{suffix}"
    training = config.setdefault("training", {})
    training["sampling"] = {"rows": sample_rows}
    if sample_rows >= UNSAMPLED:  # every row built: the row budget must not cut snapshots
        training.setdefault("snapshots", {})["max_rows"] = UNSAMPLED
    training["tuning"] = {"trials": trials}
    if profiles > WHOLE_PROFILES:
        for key in ("test_profile_fraction", "validation_profile_fraction"):
            training[key] = round(training.get(key, 0.3) * WHOLE_PROFILES / profiles, 4)
    path = out / f"{name}{suffix}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(path: Path, ingested: Path, work: Path) -> dict:
    """Child process: ``train_model``; its seconds (wall and CPU), peak RSS, rows, test figures
    and the seconds of its phases (``benchmarks/training_phases.py``)."""
    try:  # the phases' module imports this one: imported here, once both are loaded
        from training_phases import instrument
    except ImportError:  # pragma: no cover
        from benchmarks.training_phases import instrument

    from propensity.pipeline.jobs.train import train_model

    phases = instrument()

    config = ProjectConfig(
        work_dir=str(work / "work"), mlflow={"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = train_model(str(path), ingested, config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    phases.done.set()
    plan = result.plan
    sampled = [line for line in plan.splitlines() if line.startswith("sampled:")]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average": os.getloadavg()[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "snapshots": len(result.snapshots),
        "training_rows": sum(part["rows"] for part in result.rows.values()),
        "train_rows": result.rows["train"]["rows"],
        "test_rows": result.rows["test"]["rows"],
        "test_positives": result.rows["test"]["positives"],
        "test_auc": result.metrics["test_auc"],
        "test_auc_ci": [result.metrics["test_auc_ci_low"], result.metrics["test_auc_ci_high"]],
        "test_brier": result.metrics["test_brier"],
        "model_family": result.model_family,
        "sampling": sampled[0] if sampled else "every row built",
        "phases": {k: {n: round(v, 1) for n, v in f.items()} for k, f in phases.figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--compare-profiles", type=int, default=150_000, help="0: no quality comparison")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sample-rows", type=int, default=1_500_000, help="training.sampling.rows")
    parser.add_argument("--trials", type=int, default=12, help="tuning trials")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    _, ingested, _ = ensure_ingested(args.profiles, args.days, ProjectConfig())
    work = WORK / str(args.profiles)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    load = os.getloadavg()[0]

    results = {}
    for name in args.models:
        print(f"training {name} on {args.profiles:,} profiles ...", flush=True)
        path = model_yaml(name, work, args.sample_rows, args.trials, profiles=args.profiles)
        results[name] = in_child(train, path, ingested, work)
        r = results[name]
        print(
            f"  {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} CPU-s, load average {r['load_average']:.1f} at"
            f" the end), peak RSS {r['peak_rss_mib']:,.0f} MiB; {r['sampling']}",
            flush=True,
        )
        print_phases(r["phases"])

    compare = {}
    if args.compare_profiles:
        _, small, _ = ensure_ingested(args.compare_profiles, args.days, ProjectConfig())
        rows = max(1000, round(args.sample_rows * args.compare_profiles / args.profiles))
        for label, budget in (("unsampled", UNSAMPLED), ("sampled", rows)):
            print(f"training upsell on {args.compare_profiles:,} profiles, {label} ...", flush=True)
            path = model_yaml("upsell", work, budget, args.trials, suffix=f"_{label}")
            compare[label] = in_child(train, path, small, work)
        full, sampled = compare["unsampled"], compare["sampled"]
        low, high = full["test_auc_ci"]
        compare["sampled_auc_within_unsampled_interval"] = bool(low <= sampled["test_auc"] <= high)
        compare["profiles"] = args.compare_profiles

    print(f"\n{args.profiles:,} profiles (load average {load:.1f} at the start)")
    print(
        f"{'model':<22}{'snapshots':>10}{'rows':>11}{'train':>10}{'seconds':>9}{'RSS MiB':>9}"
        f"{'test AUC':>10}{'interval':>18}{'positives':>10}"
    )
    shown = {
        **results,
        **{f"upsell {k} ({args.compare_profiles:,})": v for k, v in compare.items() if isinstance(v, dict)},
    }
    for key, r in shown.items():
        print(
            f"{key:<22}{r['snapshots']:>10}{r['training_rows']:>11,}{r['train_rows']:>10,}{r['seconds']:>9.0f}"
            f"{r['peak_rss_mib']:>9,.0f}{r['test_auc']:>10.4f}"
            f"{'[{:.4f}, {:.4f}]'.format(*r['test_auc_ci']):>18}"
            f"{r['test_positives']:>10,}"
        )
    if compare:
        where = "within" if compare["sampled_auc_within_unsampled_interval"] else "OUTSIDE"
        print(
            f"sampled upsell AUC {where} the unsampled model's interval (same data, same whole test snapshot)"
        )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "snapshots": max(r["snapshots"] for r in results.values()),
                "training_rows": {k: r["training_rows"] for k, r in results.items()},
                "seconds": max(r["seconds"] for r in results.values()),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in results.values()),
                "load_average": load,
                "sample_rows": args.sample_rows,
                "trials": args.trials,
                "models": results,
                "compare": compare,
            }
        )
    )


if __name__ == "__main__":
    main()
