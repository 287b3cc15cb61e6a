"""Batch scoring end to end on 1M generated profiles, and the factors step against ``pred_contrib``.

    python benchmarks/scoring.py [--profiles 1000000] [--train-profiles 150000] [--trials 12] [--no-bounded]
                                 [--no-linear] [--reuse-models] [--end-to-end-only]

Reuses (or generates and ingests) the data of ``benchmarks/features.py``. Two registered models
are scored, each in a fresh process so that its peak RSS is the scoring job's alone:

  * ``trained``: what ``propensity train`` produces for a 30-day purchase model whose population
    is every profile seen in the last year (so that ~all 1M profiles are scored); LightGBM
    family, default tuning, trained on another generated dataset of ``--train-profiles``
    people (training's stacked snapshots of 1M profiles would not fit this machine's memory;
    scoring does not care where the model learnt);
  * ``fixed_300``: the same features and calibrator with a fixed 300-tree, 31-leaf, depth-6
    booster, fitted to labels drawn from the trained model's probabilities on a 200k sample of
    the scoring-date features (so that the trees fill their leaves as on real data).

Per model, the end-to-end job (``score_model``: load, point-in-time features, prediction, top-5
factors, Parquet partition, MLflow run) is timed three times: with DuckDB's default memory limit and
memory-bounded (DuckDB limited to ``BOUNDED_MEMORY``), once more with the factors by the
Linear-TreeSHAP pass instead of the leaf tables, and against it, in the same run, the
feature build alone (the same SQL for the features the model's trees split on, which is what the
job builds, into a table in one query) as the baseline. Then the factors step alone is timed
against LightGBM's ``pred_contrib`` on the same model and rows (``benchmarks/factors.py``), and
checked against it. ``--reuse-models`` keeps the work folder's MLflow store and scores the
models a previous run of the same ``--profiles`` registered (``models.json`` there) instead of
training them again (~15 min). Prints a table; the last line is one JSON object (top-level keys for the
fixed 300-tree model, both models under ``models``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import yaml

from propensity.core.config import ProjectConfig
from propensity.features.build.event_queries import data_end
from propensity.features.connection import relation_columns
from propensity.features.sql import sql_ident

try:  # run as a script (python benchmarks/scoring.py) or imported as benchmarks.scoring
    from data import DATA, ensure_ingested, in_child
    from factors import PARAMS, TREES, compare_with_pred_contrib
except ImportError:  # pragma: no cover
    from benchmarks.data import DATA, ensure_ingested, in_child
    from benchmarks.factors import PARAMS, TREES, compare_with_pred_contrib

WORK = DATA / "scoring"
MODEL = "purchase_30d"
FIXED = "fixed_300"
FIT_ROWS = 200_000  # rows the fixed model is fitted on
FACTOR_ROWS = 100_000  # rows for the factors-vs-pred_contrib comparison
PRED_CONTRIB_ROWS = 20_000


# The figures of factors_vs_pred_contrib, NaN when --end-to-end-only skips it.
SKIPPED_COMPARISON = (
    "trees",
    "leaves",
    "factors_rows_per_s",
    "pred_contrib_rows_per_s",
    "factors_ratio",
    "factors_ratio_cpu",
    "factors_linear_ratio",
    "max_abs_diff",
    "top_k_agrees",
)

# The memory-bounded run: DuckDB held to BOUNDED_MEMORY (the features built in the job's
# automatic profile partitions, as in the default run).
BOUNDED_MEMORY = "3GB"


def project(work: Path, bounded: bool = False) -> ProjectConfig:
    """A throw-away project: its own MLflow store and work dir under ``benchmarks/.data``;
    ``bounded``: with the memory limit and profile partitions of the memory-bounded run."""
    extra = (
        {
            "engine": {"memory_limit": BOUNDED_MEMORY, "temp_directory": str(DATA / "spill")},
        }
        if bounded
        else {}
    )
    return ProjectConfig(
        work_dir=str(work / "work"),
        mlflow={"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        **extra,
    )


def model_config(path: Path, max_training_rows: int, trials: int) -> Path:
    """The benchmark's model: a 30-day purchase propensity over every profile active in a year."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": MODEL,
                "description": "Any profile seen in the last year: purchase within 30 days.",
                "population": "days_since_last_event <= 365",
                "outcome": {"event_type": "purchase", "horizon_days": 30},
                "training": {
                    "candidates": ["lightgbm"],
                    "max_training_rows": max_training_rows,
                    "tuning": {"trials": trials},
                },
            }
        )
    )
    return path


def train(model_yaml: Path, ingested: Path, work: Path) -> dict:
    """Child process: ``train_model`` as the CLI runs it; the version and training figures."""
    from propensity.pipeline.jobs.train import train_model

    start = time.perf_counter()
    result = train_model(str(model_yaml), ingested, project(work))
    return {
        "version": result.version,
        "seconds": time.perf_counter() - start,
        "rows": result.rows,
        "test_auc": result.metrics.get("test_auc"),
    }


def _features(
    ingested: Path,
    config: ProjectConfig,
    categories,
    rows: int | None = None,
    columns: list[str] | None = None,
):
    """The point-in-time features at the data's end (what scoring builds), with the engine; a
    fixed pseudo-random sample of ``rows`` profiles when given; only ``columns`` when given."""
    from propensity.features.build.sql_compiler import snapshot_sql
    from propensity.pipeline.jobs.events import feature_set, load_events

    loaded = load_events(ingested, config)
    as_of = data_end(loaded.con)
    fs = feature_set(loaded, config, before=as_of, categories=categories)
    sources = loaded.sources(as_of)
    sql = snapshot_sql(
        fs,
        as_of,
        relation_columns(loaded.con, sources.profiles),
        events=sources.events,
        profiles=sources.profiles,
        ordered=False,
    )
    if columns is not None:
        sql = f"SELECT profile_id, {', '.join(sql_ident(c) for c in columns)} FROM ({sql})"
    if rows is None:
        loaded.con.execute(f"CREATE TEMP TABLE features AS {sql}")
        return None
    return loaded.con.execute(f"SELECT * FROM ({sql}) ORDER BY hash(profile_id) LIMIT {rows}").df()


def register_fixed(ingested: Path, work: Path, version: str) -> dict:
    """Child process: the fixed 300-tree model, registered as ``fixed_300``."""
    import mlflow

    from propensity.models import tracking

    config = project(work)
    client = tracking.configure(config)
    trained, _ = tracking.load_propensity_model(client, MODEL, version=version)
    # Every feature of 1M profiles in one query: held to BOUNDED_MEMORY (spilling), as the
    # machine is shared (DuckDB's default, 60% of RAM, was killed at 13 GiB).
    frame = _features(ingested, project(work, bounded=True), trained.metadata.get("categories"), FIT_ROWS)
    rng = np.random.default_rng(7)
    labels = (rng.random(len(frame)) < trained.predict_proba(frame)).astype(float)
    booster = lgb.train(PARAMS, lgb.Dataset(trained.matrix(frame), labels), num_boost_round=TREES)
    fixed = dataclasses.replace(
        trained,
        name=FIXED,
        booster_text=booster.model_to_string(),
        metadata=dict(trained.metadata),
        _booster=None,
        _explainer=None,
    )
    fixed.metadata["reference_probabilities"] = np.quantile(
        fixed.predict_proba(frame), np.linspace(0, 1, 1001)
    ).tolist()
    mlflow.set_experiment(FIXED)
    with mlflow.start_run(run_name="fixed 300-tree model"):
        _, fixed_version = tracking.log_model(fixed, frame.head(50), FIXED)
    return {"version": fixed_version}


# The job's phases as the benchmark times them (wall seconds, summed over batches): each is a
# function the job calls by its module's name for it, wrapped in a timer in the child process.
PHASES = (
    ("load", "propensity.pipeline.jobs.score", "prepare"),
    ("split events", "propensity.features.duckdb.scoring", "partition_relations"),
    ("engine", "propensity.features.duckdb.scoring", "score"),
    ("score batches", "propensity.pipeline.jobs.score", "score_batch"),
    ("to float64", "propensity.models.estimator", "arrow_lightgbm_array"),
    ("predict+factors", "propensity.models.treeshap", "TreeShapExplainer.part_scores_and_top_k"),
    ("factor lists", "propensity.models.scoring", "factor_lists"),
    ("write batches", "propensity.features.duckdb.ranked_write", "UnrankedRun.add"),
    ("rank+write", "propensity.features.duckdb.ranked_write", "UnrankedRun.write_ranked"),
    ("mlflow", "propensity.pipeline.jobs.score", "log_scoring_run"),
)


def timed_phases() -> dict[str, float]:
    """Wrap each of PHASES in a timer (in this process only); the dict their seconds add up in."""
    import importlib

    seconds = dict.fromkeys((phase for phase, _, _ in PHASES), 0.0)

    def timer(phase: str, original):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - start

        return timed

    for phase, module, attribute in PHASES:
        try:
            owner = importlib.import_module(module)
        except ModuleNotFoundError:  # (an older checkout, compared in the same run)
            continue
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        if hasattr(owner, name):  # (an older checkout, compared in the same run, may lack one)
            setattr(owner, name, timer(phase, getattr(owner, name)))
    return seconds


def phase_breakdown(seconds: dict[str, float]) -> dict[str, float]:
    """The job's wall time by phase: ``features`` is the scoring loop's wait for the feature
    batches (the engine's time less what its own thread spent scoring and writing), the prefetch
    thread's build that the scoring did not hide."""
    own = ("split events", "score batches", "write batches", "rank+write")
    waited = seconds["engine"] - sum(seconds[p] for p in own)
    scoring_rest = seconds["score batches"] - seconds["to float64"] - seconds["predict+factors"]
    return {
        "load": seconds["load"],
        "split events": seconds["split events"],
        "features (waited)": waited,
        "to float64": seconds["to float64"],
        "predict+factors": seconds["predict+factors"],
        "factor lists+rest": scoring_rest,
        "write batches": seconds["write batches"],
        "rank+write": seconds["rank+write"],
        "mlflow": seconds["mlflow"],
    }


def score(
    name: str, version: str, ingested: Path, work: Path, bounded: bool = False, linear: bool = False
) -> dict:
    """Child process: the scoring job end to end, its phases and this process's peak RSS and
    CPU seconds; ``linear``: factors by the Linear-TreeSHAP pass, no leaf tables (the baseline
    of ``models.treeshap_tables``)."""
    from propensity.models import treeshap_tables
    from propensity.pipeline.jobs.score import score_model

    if linear:
        treeshap_tables.TABLE_MAX_VALUES = 0
    phases = timed_phases()
    start, cpu = time.perf_counter(), time.process_time()
    run = score_model(name, ingested, project(work, bounded), out=work / "scores", version=version)
    return {
        "phases": phase_breakdown(phases),
        "cpu_seconds": time.process_time() - cpu,
        "seconds": time.perf_counter() - start,
        "profiles": run.profiles,
        "scored": run.scored,
        "as_of": str(run.as_of),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def features_only(name: str, version: str, ingested: Path, work: Path) -> dict:
    """Child process (the baseline): loading the events and the same point-in-time feature
    build into a table, alone, in one query: the features the model splits on, which is what
    the job builds."""
    from propensity.models import tracking

    config = project(work)
    model, _ = tracking.load_propensity_model(tracking.configure(config), name, version=version)
    start = time.perf_counter()
    _features(ingested, config, model.metadata.get("categories"), columns=model.used_features())
    return {"seconds": time.perf_counter() - start}


def factors_vs_pred_contrib(name: str, version: str, ingested: Path, work: Path) -> dict:
    """Child process: our top-5 factors against ``pred_contrib`` on the same model and rows."""
    from propensity.models import tracking

    config = project(work)
    model, _ = tracking.load_propensity_model(tracking.configure(config), name, version=version)
    frame = _features(ingested, config, model.metadata.get("categories"), FACTOR_ROWS)
    X = model.lightgbm_array(frame)
    result = compare_with_pred_contrib(model.booster, X, k=5, pred_contrib_rows=PRED_CONTRIB_ROWS)
    trees = model.booster.dump_model()["tree_info"]
    result.update(
        rows=len(X),
        features=X.shape[1],
        used_features=len(model.used_features()),
        trees=len(trees),
        leaves=int(sum(t["num_leaves"] for t in trees)),
        depth=int(max(_depth(t["tree_structure"]) for t in trees)),
    )
    return result


def _depth(node: dict) -> int:
    if "leaf_index" in node or ("leaf_value" in node and "split_index" not in node):
        return 0
    return 1 + max(_depth(node["left_child"]), _depth(node["right_child"]))


def registered_models(work: Path, ingested: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """The trained and the fixed model's figures and versions: those ``models.json`` in ``work``
    records when ``--reuse-models`` (the work folder kept, but its scores), else trained and
    registered afresh in an emptied ``work`` and recorded there."""
    record = work / "models.json"
    models = json.loads(record.read_text()) if args.reuse_models and record.is_file() else {}
    if "trained" in models:
        shutil.rmtree(work / "scores", ignore_errors=True)
        print(f"reusing {MODEL} v{models['trained']['version']} from {record}", flush=True)
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        _, train_ingested, _ = ensure_ingested(args.train_profiles, args.days, ProjectConfig())
        model_yaml = model_config(work / f"{MODEL}.yaml", args.max_training_rows, args.trials)
        print("training ...", flush=True)
        models["trained"] = in_child(train, model_yaml, train_ingested, work)
        print(f"trained {MODEL} v{models['trained']['version']} in {models['trained']['seconds']:.0f} s")
        record.write_text(json.dumps(models))  # a failure further on keeps the trained model
    if "fixed" not in models:
        models["fixed"] = in_child(register_fixed, ingested, work, models["trained"]["version"])
        record.write_text(json.dumps(models))
    return models["trained"], models["fixed"]


def _rounded(value: float, digits: int | None = None) -> float | int | None:
    """``round(value, digits)``; None for NaN (a figure the run skipped: JSON has no NaN)."""
    return None if value != value else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--train-profiles", type=int, default=150_000)
    parser.add_argument("--max-training-rows", type=int, default=2_000_000)
    parser.add_argument("--trials", type=int, default=12, help="tuning trials of the trained model")
    parser.add_argument("--no-bounded", action="store_true", help="skip the memory-bounded runs")
    parser.add_argument("--no-linear", action="store_true", help="skip the Linear-TreeSHAP runs")
    parser.add_argument(
        "--end-to-end-only",
        action="store_true",
        help="only the end-to-end jobs: no feature-build baseline, no factors against pred_contrib",
    )
    parser.add_argument(
        "--reuse-models",
        action="store_true",
        help="score the models a previous run registered (its work folder's models.json), no training",
    )
    args = parser.parse_args()
    _, ingested, _ = ensure_ingested(args.profiles, args.days, ProjectConfig())
    work = WORK / str(args.profiles)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    trained, fixed = registered_models(work, ingested, args)
    models = {"trained": (MODEL, trained["version"]), FIXED: (FIXED, fixed["version"])}

    results: dict[str, dict] = {}
    for key, (name, version) in models.items():
        print(f"scoring {key} ...", flush=True)
        run = in_child(score, name, version, ingested, work)
        print(f"  end to end {run['seconds']:.1f} s, peak RSS {run['peak_rss_mib']:,.0f} MiB", flush=True)
        skipped = {"seconds": float("nan"), "peak_rss_mib": float("nan")}
        bounded = skipped if args.no_bounded else in_child(score, name, version, ingested, work, True)
        print(
            f"  bounded {bounded['seconds']:.1f} s, peak RSS {bounded['peak_rss_mib']:,.0f} MiB", flush=True
        )
        linear = (
            {"seconds": float("nan"), "phases": {}}
            if args.no_linear
            else in_child(score, name, version, ingested, work, False, True)
        )
        print(f"  linear-pass factors {linear['seconds']:.1f} s", flush=True)
        if args.end_to_end_only:  # the comparisons left out: their figures NaN
            baseline = {"seconds": float("nan")}
            factors = dict.fromkeys(SKIPPED_COMPARISON, float("nan"))
        else:
            baseline = in_child(features_only, name, version, ingested, work)
            factors = in_child(factors_vs_pred_contrib, name, version, ingested, work)
        results[key] = {
            **factors,
            **run,
            "bounded_seconds": bounded["seconds"],
            "bounded_peak_rss_mib": bounded["peak_rss_mib"],
            "linear_seconds": linear["seconds"],
            "linear_phases": linear["phases"],
            "features_only_seconds": baseline["seconds"],
            "ratio_to_features_only": run["seconds"] / baseline["seconds"],
        }

    print(f"\n{results[FIXED]['profiles']:,} profiles at {results[FIXED]['as_of']}")
    header = (
        f"{'model':<10}{'trees':>6}{'leaves':>7}{'scored':>10}{'end-to-end s':>13}{'features s':>11}"
        f"{'x feat':>7}{'factors/s':>11}{'contrib/s':>10}{'ratio':>7}{'max diff':>10}{'RSS MiB':>9}"
        f"{'bounded s':>10}{'RSS MiB':>9}"
    )
    print(header)
    for key, r in results.items():
        print(
            f"{key:<10}{r['trees']:>6}{r['leaves']:>7}{r['scored']:>10,}{r['seconds']:>13.1f}"
            f"{r['features_only_seconds']:>11.1f}{r['ratio_to_features_only']:>7.2f}"
            f"{r['factors_rows_per_s']:>11,.0f}{r['pred_contrib_rows_per_s']:>10,.0f}"
            f"{r['factors_ratio']:>7.1f}{r['max_abs_diff']:>10.1e}{r['peak_rss_mib']:>9,.0f}"
            f"{r['bounded_seconds']:>10.1f}{r['bounded_peak_rss_mib']:>9,.0f}"
        )
    for key, r in results.items():
        shares = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in r["phases"].items())
        print(f"{key} phases (wall s; CPU {r['cpu_seconds']:.0f} s in all): {shares}")
        shares = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in r["linear_phases"].items())
        print(f"{key} with the Linear-TreeSHAP pass, no leaf tables: {r['linear_seconds']:.1f} s: {shares}")
    print(
        f"bounded: DuckDB memory_limit {BOUNDED_MEMORY}; the other runs: DuckDB's default limit (60% of "
        "RAM); both build the features in the job's automatic profile partitions"
    )
    top = results[FIXED]
    print(
        json.dumps(
            {
                "profiles": top["profiles"],
                "scored": top["scored"],
                "seconds": _rounded(top["seconds"], 2),
                "features_only_seconds": _rounded(top["features_only_seconds"], 2),
                "factors_rows_per_s": _rounded(top["factors_rows_per_s"]),
                "pred_contrib_rows_per_s": _rounded(top["pred_contrib_rows_per_s"]),
                "factors_ratio": _rounded(top["factors_ratio"], 2),
                "factors_ratio_cpu": _rounded(top["factors_ratio_cpu"], 2),
                "factors_linear_ratio": _rounded(top["factors_linear_ratio"], 2),
                "max_abs_diff": top["max_abs_diff"],
                "top_k_agrees": top["top_k_agrees"],
                "peak_rss_mib": _rounded(top["peak_rss_mib"]),
                "phases": {phase: round(seconds, 2) for phase, seconds in top["phases"].items()},
                "bounded_seconds": None if args.no_bounded else _rounded(top["bounded_seconds"], 2),
                "linear_pass_seconds": _rounded(top["linear_seconds"], 2),
                "bounded_peak_rss_mib": None if args.no_bounded else _rounded(top["bounded_peak_rss_mib"]),
                "bounded_memory_limit": BOUNDED_MEMORY,
                "training_seconds": round(trained["seconds"], 1),
                "training_profiles": args.train_profiles,
                "trained_test_auc": trained["test_auc"],
                "models": results,
            }
        )
    )


if __name__ == "__main__":
    main()
