"""Per-profile factors: our compiled TreeSHAP (models.treeshap) against LightGBM's ``pred_contrib``.

    python benchmarks/factors.py [--rows 100000] [--pred-contrib-rows 20000] [--train-rows 200000]

Trains a fixed LightGBM model (300 trees, 31 leaves, max_depth 6) on synthetic rows x 60 features
(some NaNs, one categorical), then times in the same run, best of 2 after a warm-up call: our
top-k factors (leaf tables), the same by the Linear-TreeSHAP pass (the kernel before the leaf
tables), our full contribution matrix, and ``pred_contrib`` (on fewer rows: rows/s is what
counts), and checks ours against ``pred_contrib`` on the same rows. Prints a small table and, last,
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import lightgbm as lgb
import numpy as np

from propensity.models.treeshap import TreeShapExplainer

N_FEATURES = 60
CATEGORICAL = 7  # the column holding category codes
PARAMS = {
    "objective": "binary",
    "num_leaves": 31,
    "max_depth": 6,
    "learning_rate": 0.05,
    "min_child_samples": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "seed": 11,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbosity": -1,
}
TREES = 300


def _timed(run) -> tuple[float, float]:
    """Wall and process CPU seconds (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare_with_pred_contrib(
    booster: lgb.Booster, X: np.ndarray, k: int = 5, pred_contrib_rows: int | None = None
) -> dict:
    """Time our top-k and full contributions on all of ``X`` and ``pred_contrib`` (and plain raw
    prediction) on its first ``pred_contrib_rows`` rows (default all): best of 2 after a warm-up,
    the paths taking turns so that load from other processes hits them alike. Returns rows/s
    (wall) and rows per CPU-second, the top-k speed-up over ``pred_contrib`` (wall and CPU), the
    max |ours - pred_contrib| on the same rows, whether our top-k |impacts| equal the k largest
    |pred_contrib| on every row, and the build and first-call (compile or cache load) seconds."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    start = time.perf_counter()
    explainer = TreeShapExplainer.from_booster(booster)
    build_seconds = time.perf_counter() - start
    linear = TreeShapExplainer.from_booster(booster, tables=False)  # the kernel before leaf tables
    start = time.perf_counter()
    explainer.top_k(X[:8], k)
    explainer.contributions(X[:8])
    linear.top_k(X[:8], k)
    compile_seconds = time.perf_counter() - start
    sample = X[: pred_contrib_rows or len(X)]
    booster.predict(sample[:8], pred_contrib=True)

    paths = {
        "factors": (len(X), lambda: explainer.top_k(X, k)),
        "factors_linear": (len(X), lambda: linear.top_k(X, k)),
        "contributions": (len(X), lambda: explainer.contributions(X)),
        "pred_contrib": (len(sample), lambda: booster.predict(sample, pred_contrib=True)),
        "predict": (len(sample), lambda: booster.predict(sample, raw_score=True)),
    }
    best = {name: (float("inf"), float("inf")) for name in paths}
    for _ in range(2):
        for name, (_, run) in paths.items():
            wall, cpu = _timed(run)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    result: dict = {}
    for name, (rows, _) in paths.items():
        result[f"{name}_rows_per_s"] = rows / best[name][0]
        result[f"{name}_rows_per_cpu_s"] = rows / best[name][1]
    result["factors_ratio"] = result["factors_rows_per_s"] / result["pred_contrib_rows_per_s"]
    result["factors_ratio_cpu"] = result["factors_rows_per_cpu_s"] / result["pred_contrib_rows_per_cpu_s"]
    result["factors_linear_ratio"] = result["factors_linear_rows_per_s"] / result["pred_contrib_rows_per_s"]
    result["tables"] = bool(len(explainer.tables.depth))

    reference = booster.predict(sample, pred_contrib=True)
    _, impacts = explainer.top_k(sample, k)
    expected = -np.sort(-np.abs(reference[:, :-1]), axis=1)[:, : impacts.shape[1]]
    result.update(
        max_abs_diff=float(np.abs(explainer.contributions(sample) - reference).max()),
        max_abs_diff_linear=float(np.abs(linear.contributions(sample) - reference).max()),
        top_k_agrees=bool(np.allclose(np.abs(impacts), expected, rtol=0, atol=1e-9)),
        compile_seconds=compile_seconds,
        build_seconds=build_seconds,
        pred_contrib_rows=len(sample),
    )
    return result


def synthetic(rows: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows x 60 features (a few with NaNs, one categorical with 12 codes) and a binary label
    that depends on many features with interactions, so the trees fill their 31 leaves."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, N_FEATURES))
    X[:, 40:50] = rng.exponential(size=(rows, 10)).round(1)  # count-like, with zeros
    X[:, CATEGORICAL] = rng.integers(0, 12, size=rows)
    for column in range(20, 30):
        X[rng.random(rows) < 0.08, column] = np.nan
    signal = (
        X[:, :20] @ rng.normal(scale=0.3, size=20)
        + np.sin(3 * X[:, 0]) * X[:, 1]
        + 0.8 * np.isin(X[:, CATEGORICAL], [1, 4, 9])
        + np.nan_to_num(X[:, 20:30], nan=1.0) @ rng.normal(scale=0.2, size=10)
        + 0.3 * (X[:, 40:50] > 1).sum(axis=1)
    )
    y = (signal + rng.logistic(size=rows) > np.median(signal)).astype(float)
    return X, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows explained (ours)")
    parser.add_argument("--pred-contrib-rows", type=int, default=20_000, help="rows for pred_contrib")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    X, y = synthetic(args.train_rows)
    start = time.perf_counter()
    booster = lgb.train(PARAMS, lgb.Dataset(X, y, categorical_feature=[CATEGORICAL]), num_boost_round=TREES)
    train_seconds = time.perf_counter() - start
    explain, _ = synthetic(args.rows, seed=4)
    result = compare_with_pred_contrib(booster, explain, k=args.k, pred_contrib_rows=args.pred_contrib_rows)
    trees = booster.dump_model()["tree_info"]
    result.update(
        rows=args.rows,
        trees=len(trees),
        leaves=int(sum(t["num_leaves"] for t in trees)),
        depth=PARAMS["max_depth"],
        train_seconds=train_seconds,
    )
    print(f"model: {result['trees']} trees, {result['leaves']} leaves, max_depth {result['depth']}")
    print(f"{'path':<26}{'rows':>9}{'rows/s':>12}{'rows/cpu-s':>12}")
    for name, label, count in (
        ("factors", f"ours, top-{args.k} factors", args.rows),
        ("factors_linear", "  linear pass, no tables", args.rows),
        ("contributions", "ours, all contributions", args.rows),
        ("pred_contrib", "lightgbm pred_contrib", result["pred_contrib_rows"]),
        ("predict", "lightgbm predict (raw)", result["pred_contrib_rows"]),
    ):
        wall, cpu = result[f"{name}_rows_per_s"], result[f"{name}_rows_per_cpu_s"]
        print(f"{label:<26}{count:>9}{wall:>12,.0f}{cpu:>12,.0f}")
    print(
        f"factors {result['factors_ratio']:.1f}x pred_contrib ({result['factors_ratio_cpu']:.1f}x per "
        f"CPU-second; the linear pass {result['factors_linear_ratio']:.1f}x); max |ours - "
        f"pred_contrib| {result['max_abs_diff']:.2e} (linear pass {result['max_abs_diff_linear']:.2e}); "
        "top-k agrees: "
        f"{result['top_k_agrees']}; compile {result['compile_seconds']:.1f} s, build "
        f"{result['build_seconds']:.2f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
