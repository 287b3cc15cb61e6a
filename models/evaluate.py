"""Evaluation on the test snapshot: metrics, deciles, 0-100 scores and buckets.

Baselines are in :mod:`propensity.models.baselines`, intervals in
:mod:`propensity.models.bootstrap`, plots in :mod:`propensity.models.plots`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from propensity.models.rates import wilson_interval

TOP_FRACTIONS = (0.05, 0.10, 0.20)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over equal-frequency bins, weighted by bin size."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(p[chunk].mean() - y[chunk].mean())
    return total / len(p)


def top_share(y: np.ndarray, p: np.ndarray, fraction: float) -> tuple[float, float]:
    """(lift, capture) when targeting the top ``fraction`` by score."""
    n = max(1, round(len(p) * fraction))
    top = np.argsort(-p, kind="stable")[:n]
    rate, base = y[top].mean(), y.mean()
    return (rate / base if base > 0 else float("nan"), y[top].sum() / y.sum() if y.sum() else float("nan"))


def metrics(y: np.ndarray, p: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """AUC, average precision, Brier, log loss, ECE, lift and capture at the top 5/10/20 %."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-9, 1 - 1e-9)
    out = {
        f"{prefix}auc": roc_auc_score(y, p),
        f"{prefix}average_precision": average_precision_score(y, p),
        f"{prefix}brier": brier_score_loss(y, p),
        f"{prefix}log_loss": log_loss(y, p, labels=[0, 1]),
        f"{prefix}ece": expected_calibration_error(y, p),
        f"{prefix}base_rate": float(y.mean()),
    }
    for fraction in TOP_FRACTIONS:
        lift, capture = top_share(y, p, fraction)
        out[f"{prefix}lift_at_{int(fraction * 100)}"] = lift
        out[f"{prefix}capture_at_{int(fraction * 100)}"] = capture
    return {k: float(v) for k, v in out.items()}


def decile_table(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Lift and cumulative gains by score decile (decile 1 = highest scores)."""
    order = np.argsort(-p, kind="stable")
    rows = []
    cumulative = 0
    for i, chunk in enumerate(np.array_split(order, 10), start=1):
        cumulative += y[chunk].sum()
        rows.append(
            {
                "decile": i,
                "profiles": len(chunk),
                "positives": int(y[chunk].sum()),
                "predicted_rate": float(p[chunk].mean()),
                "actual_rate": float(y[chunk].mean()),
                "lift": float(y[chunk].mean() / y.mean()) if y.mean() else float("nan"),
                "cumulative_capture": float(cumulative / y.sum()) if y.sum() else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def scores_from_reference(p: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """0-100: the share of the reference population (test snapshot at training) scoring lower.

    ``reference`` holds the quantiles at 0, 1/N, ..., 1 of the reference probabilities.
    """
    reference = np.sort(np.asarray(reference, dtype=float))
    steps = max(len(reference) - 1, 1)
    return np.clip(np.rint(100 * np.searchsorted(reference, p, side="left") / steps), 0, 100).astype(int)


def buckets(score: np.ndarray, medium: int, high: int) -> np.ndarray:
    """0-100 scores -> 'low' / 'medium' / 'high' at the configured thresholds."""
    return np.where(score >= high, "high", np.where(score >= medium, "medium", "low"))


def bucket_table(y: np.ndarray, p: np.ndarray, bucket: np.ndarray) -> pd.DataFrame:
    """Size, predicted and actual rate per bucket: did the predictions come true?

    ``actual_low`` / ``actual_high``: the actual rate's 95 % Wilson interval (on the bucket's
    ``positives``); ``within_interval``: the predicted rate lies inside it (the bucket is
    calibrated as far as its size can tell).
    """
    frame = pd.DataFrame({"bucket": bucket, "y": y, "p": p})
    table = frame.groupby("bucket").agg(
        profiles=("y", "size"),
        predicted_rate=("p", "mean"),
        actual_rate=("y", "mean"),
        positives=("y", "sum"),
    )
    order = [b for b in ("high", "medium", "low") if b in table.index]
    table = table.loc[order].reset_index()
    intervals = [wilson_interval(k, n) for k, n in zip(table["positives"], table["profiles"], strict=True)]
    table["actual_low"] = [low for low, _ in intervals]
    table["actual_high"] = [high for _, high in intervals]
    table["within_interval"] = (table["predicted_rate"] >= table["actual_low"]) & (
        table["predicted_rate"] <= table["actual_high"]
    )
    return table


def calibration_figures(y: np.ndarray, p: np.ndarray, table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Predicted against actual rate overall and per bucket of one snapshot, as metrics to log:
    ``{prefix}predicted_rate`` beside the base rate's Wilson interval
    (``{prefix}base_rate_ci_low`` / ``_high``), per bucket ``{prefix}calibration_<bucket>_``
    predicted / actual / actual_low / actual_high / positives / profiles, and
    ``{prefix}calibration_buckets_outside``: how many buckets' predicted rate is outside the
    actual rate's interval. ``table``: :func:`bucket_table` of the same rows."""
    y = np.asarray(y, dtype=float)
    low, high = wilson_interval(float(y.sum()), len(y))
    out = {
        f"{prefix}predicted_rate": float(np.mean(p)),
        f"{prefix}base_rate_ci_low": low,
        f"{prefix}base_rate_ci_high": high,
        f"{prefix}calibration_buckets_outside": float((~table["within_interval"]).sum()),
    }
    for row in table.itertuples(index=False):
        key = f"{prefix}calibration_{row.bucket}_"
        out.update(
            {
                f"{key}predicted": float(row.predicted_rate),
                f"{key}actual": float(row.actual_rate),
                f"{key}actual_low": float(row.actual_low),
                f"{key}actual_high": float(row.actual_high),
                f"{key}positives": float(row.positives),
                f"{key}profiles": float(row.profiles),
            }
        )
    return out
