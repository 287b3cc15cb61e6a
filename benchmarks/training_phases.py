"""Where sampled training's time goes: ``train_model`` once, timed phase by phase.

    flock /work/bigrun.lock python benchmarks/training_phases.py [--profiles 1000000]
        [--model upsell] [--sample-rows 1500000] [--trials 12]

The model config is the benchmark's (``benchmarks/training.py``: the repository's config with
``training.sampling.rows`` and the trials set). The steps of the train job are wrapped in place
(nothing of the job changes) and each records its wall seconds, the process's CPU seconds (all
threads: DuckDB's and LightGBM's included) and the peak RSS while it ran, sampled every 0.2 s.
On a shared machine the CPU seconds are the steadier figure. Prints a table; the last line is
one JSON object with ``profiles``, ``model``, ``seconds``, ``cpu_seconds``, ``peak_rss_mib``,
``load_average`` and ``phases`` (name -> seconds, cpu_seconds, peak_rss_mib, calls).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import threading
import time

from propensity.core.config import ProjectConfig

try:  # run as a script or imported as benchmarks.training_phases
    from data import DATA, ensure_ingested
    from training import model_yaml
except ImportError:  # pragma: no cover
    from benchmarks.data import DATA, ensure_ingested
    from benchmarks.training import model_yaml

# (module, function, phase): the train job's steps, wrapped where the caller looks them up.
STEPS = (
    ("propensity.pipeline.jobs.training_data", "make_plan", "plan"),
    ("propensity.features.build.training_sample", "choose_candidates", "row choice (hash draws)"),
    ("propensity.features.build.training_sample", "build_snapshots", "feature partitions"),
    ("propensity.features.build.training_sample", "chosen_weights", "weights of the chosen rows"),
    ("propensity.features.duckdb.engine", "sampled_training_frame", "labels + rows + features (all)"),
    ("propensity.pipeline.jobs.train", "fit_candidates", "fit of the candidates"),
    ("propensity.models.train", "search_lightgbm", "  LightGBM search"),
    ("propensity.models.train", "fit_linear", "  logistic fit"),
    ("propensity.models.train", "choose_calibration", "  calibration choices"),
    ("propensity.models.train", "fit_blend", "  blend"),
    ("propensity.pipeline.jobs.train", "refit_trained", "refit"),
    ("propensity.pipeline.jobs.train", "baseline_scores", "baselines"),
    ("propensity.models.holdout_figures", "bootstrap_intervals", "test bootstrap"),
    ("propensity.pipeline.jobs.train", "global_importance", "  importance (SHAP)"),
    ("propensity.pipeline.jobs.train", "evaluate_on_test", "test figures (all)"),
    ("propensity.pipeline.jobs.train", "log_training_run", "MLflow log"),
    ("propensity.pipeline.jobs.train", "register_challenger", "MLflow register"),
)


def rss_mib() -> float:
    """The process's resident memory now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Phases:
    """Per phase: seconds, CPU seconds, calls and the peak RSS seen while one of its calls ran."""

    def __init__(self) -> None:
        self.figures: dict[str, dict] = {}
        self.rows: dict[str, int] = {}  # rows a phase worked on, where its result says
        self.open: dict[str, float] = {}  # phase -> peak RSS since it was entered
        self.lock = threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(0.2):
            now = rss_mib()
            with self.lock:
                for phase in self.open:
                    self.open[phase] = max(self.open[phase], now)

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.lock:
                self.open[phase] = rss_mib()
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                result = fn(*args, **kwargs)
                rows = getattr(result, "rows", None)  # the refit's record: how many rows it fitted
                if isinstance(rows, int):
                    self.rows[phase] = rows
                return result
            finally:
                with self.lock:
                    peak = max(self.open.pop(phase), rss_mib())
                    f = self.figures.setdefault(
                        phase, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mib": 0.0, "calls": 0}
                    )
                    f["seconds"] += time.perf_counter() - wall
                    f["cpu_seconds"] += time.process_time() - cpu
                    f["peak_rss_mib"] = max(f["peak_rss_mib"], peak)
                    f["calls"] += 1

        return timed


def instrument() -> Phases:
    """The train job's :data:`STEPS` wrapped in place, timed into the returned :class:`Phases`."""
    import importlib

    phases = Phases()
    for module, name, phase in STEPS:
        mod = importlib.import_module(module)
        setattr(mod, name, phases.wrap(getattr(mod, name), phase))
    return phases


def print_phases(phases: dict[str, dict]) -> None:
    """One line a phase: calls, seconds, CPU seconds, peak RSS."""
    print(f"{'phase':<34}{'calls':>6}{'seconds':>9}{'CPU s':>9}{'peak MiB':>10}")
    for phase, f in phases.items():
        print(
            f"{phase:<34}{f['calls']:>6}{f['seconds']:>9.1f}{f['cpu_seconds']:>9.1f}{f['peak_rss_mib']:>10,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--model", default="upsell")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sample-rows", type=int, default=1_500_000)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    from propensity.pipeline.jobs.train import train_model

    _, ingested, _ = ensure_ingested(args.profiles, args.days, ProjectConfig())
    work = DATA / "training_phases" / str(args.profiles)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    phases = instrument()
    config = ProjectConfig(
        work_dir=str(work / "work"), mlflow={"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    )
    load = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_model(str(model_yaml(args.model, work, args.sample_rows, args.trials)), ingested, config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    phases.done.set()
    peak = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
    end_load = os.getloadavg()
    print(
        f"{args.model}, {args.profiles:,} profiles; load average {load[0]:.1f} at the start, "
        f"{end_load[0]:.1f} at the end"
    )
    print_phases(phases.figures)
    print(f"{'train_model':<34}{1:>6}{wall:>9.1f}{cpu:>9.1f}{peak:>10,.0f}")
    m = result.metrics
    print(
        f"test AUC {m['test_auc']:.4f} [{m['test_auc_ci_low']:.4f}, {m['test_auc_ci_high']:.4f}], "
        f"{result.rows['test']['positives']:,} positives; train rows {result.rows['train']['rows']:,}; "
        f"{result.model_family}; rows fitted: {phases.rows}"
    )
    print(
        json.dumps(
            {
                "profiles": args.profiles,
                "model": args.model,
                "seconds": round(wall, 1),
                "cpu_seconds": round(cpu, 1),
                "peak_rss_mib": round(peak),
                "load_average": [round(load[0], 1), round(end_load[0], 1)],
                "test_auc": m["test_auc"],
                "test_auc_ci": [m["test_auc_ci_low"], m["test_auc_ci_high"]],
                "test_brier": m["test_brier"],
                "train_rows": result.rows["train"]["rows"],
                "phase_rows": phases.rows,
                "phases": {k: {n: round(v, 1) for n, v in f.items()} for k, f in phases.figures.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
