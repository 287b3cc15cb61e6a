"""Plots of a model on its test snapshot: gains, lift, calibration, scores, importance."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


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
    # A linear model has no gain: its panel is left out.
    panels = [(c, t) for c, t in (("gain", "Gain"), ("mean_abs_shap", "Mean |SHAP| (log-odds)"))]
    panels = [(c, t) for c, t in panels if importance[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        part = importance.sort_values(column, ascending=False).head(top).iloc[::-1]
        ax.barh(part["label"], part[column], color="#3b7dd8")
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)
