"""Evaluation on the test snapshot: metrics, baselines, the oracle, plots and buckets."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

TOP_FRACTIONS = (0.05, 0.10, 0.20)
RFM_FEATURES = (
    "days_since_last_event",
    "days_since_last_purchase",
    "purchase_count_365d",
    "event_count_90d",
    "revenue_sum_365d",
)
RECENCY_FEATURES = ("days_since_last_event", "days_since_last_purchase")


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
    """Size, predicted and actual rate per bucket: did the predictions come true?"""
    frame = pd.DataFrame({"bucket": bucket, "y": y, "p": p})
    table = frame.groupby("bucket").agg(
        profiles=("y", "size"),
        predicted_rate=("p", "mean"),
        actual_rate=("y", "mean"),
        positives=("y", "sum"),
    )
    order = [b for b in ("high", "medium", "low") if b in table.index]
    return table.loc[order].reset_index()


# --- baselines ---------------------------------------------------------------------------


def recency_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The better of 'recent activity' and 'recent purchase', direction chosen on train."""
    if train["label"].nunique() < 2:
        raise ValueError("the recency baseline needs both outcomes in the training rows")
    best, best_auc = (RECENCY_FEATURES[0], -1), -1.0
    for feature in RECENCY_FEATURES:
        for sign in (-1, 1):
            score = sign * train[feature].astype(float).fillna(10_000).to_numpy()
            auc = roc_auc_score(train["label"], score)
            if auc > best_auc:
                best, best_auc = (feature, sign), auc
    feature, sign = best
    return sign * test[feature].astype(float).fillna(10_000).to_numpy()


def logreg_baseline(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> np.ndarray:
    """Logistic regression on recency, frequency and monetary features."""
    # A column with no values in the population (no purchases among prospects) says nothing.
    columns = [c for c in RFM_FEATURES if c in train.columns and train[c].notna().any()]
    model = make_pipeline(
        SimpleImputer(strategy="constant", fill_value=10_000, add_indicator=True),
        FunctionTransformer(np.log1p),
        StandardScaler(),
        LogisticRegression(max_iter=1000, random_state=seed),
    )
    model.fit(train[columns].astype(float).clip(lower=0), train["label"])
    return model.predict_proba(test[columns].astype(float).clip(lower=0))[:, 1]


# --- plots -----------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gains(y: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> Path:
    """Cumulative gains of each named score; writes and returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, p in curves.items():
        order = np.argsort(-p, kind="stable")
        gains = np.concatenate([[0], np.cumsum(y[order]) / max(y.sum(), 1)])
        ax.plot(np.linspace(0, 1, len(gains)), gains, label=name)
    ax.plot([0, 1], [0, 1], "k--", label="random")
    ax.set(
        xlabel="share of profiles targeted (highest scores first)",
        ylabel="share of outcomes captured",
        title="Cumulative gains",
    )
    ax.legend()
    return _save(fig, path)


def plot_lift(table: pd.DataFrame, path: Path) -> Path:
    """Lift per score decile from :func:`decile_table`; writes and returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(table["decile"], table["lift"], color="#3b7dd8")
    ax.axhline(1, color="k", linestyle="--")
    ax.set(xlabel="score decile (1 = highest)", ylabel="lift over base rate", title="Lift by decile")
    return _save(fig, path)


def plot_calibration(y: np.ndarray, p: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Reliability diagram over equal-frequency bins; writes and returns the PNG path."""
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if len(c)]
    predicted = [p[c].mean() for c in chunks]
    observed = [y[c].mean() for c in chunks]
    fig, ax = plt.subplots(figsize=(5, 5))
    top = max(max(predicted), max(observed)) * 1.05 or 1
    ax.plot([0, top], [0, top], "k--", label="perfect")
    ax.plot(predicted, observed, "o-", label="model")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration (equal-frequency bins)")
    ax.legend()
    return _save(fig, path)


def plot_distribution(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    """Probability histograms of positives and negatives; writes and returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, max(p.max(), 1e-3), 40)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, density=True, label="outcome did not happen")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, density=True, label="outcome happened")
    ax.set(xlabel="calibrated probability", ylabel="density", title="Score distribution")
    ax.legend()
    return _save(fig, path)


def save_histogram(values: np.ndarray, path: Path, title: str, xlabel: str, bins: int = 20) -> Path:
    """A histogram of ``values``; writes and returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=bins, color="#4c72b0")
    ax.set(title=title, xlabel=xlabel, ylabel="profiles")
    return _save(fig, path)


def plot_importance(importance: pd.DataFrame, path: Path, top: int = 20) -> Path:
    """The top features by mean |SHAP|; writes and returns the PNG path."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, column, title in (
        (axes[0], "gain", "Gain"),
        (axes[1], "mean_abs_shap", "Mean |SHAP| (log-odds)"),
    ):
        part = importance.sort_values(column, ascending=False).head(top).iloc[::-1]
        ax.barh(part["label"], part[column], color="#3b7dd8")
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)
