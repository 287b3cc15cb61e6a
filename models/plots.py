"""Plots of a model: gains, lift, calibration, scores, importance, SHAP summary.

Each ``*_figure`` function returns a matplotlib Figure (for notebooks); each ``plot_*`` writes
the same figure to a PNG (for MLflow and the report) and returns the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # batch jobs and CI have no display; notebooks keep theirs
    matplotlib.use("Agg")
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


def lift_figure(table: pd.DataFrame):
    """Lift per score decile from :func:`models.evaluate.decile_table`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(table["decile"], table["lift"], color="#3b7dd8")
    ax.axhline(1, color="k", linestyle="--")
    ax.set(xlabel="score decile (1 = highest)", ylabel="lift over base rate", title="Lift by decile")
    fig.tight_layout()
    return fig


def plot_lift(table: pd.DataFrame, path: Path) -> Path:
    """:func:`lift_figure` written to ``path``; returns the path."""
    return _save(lift_figure(table), path)


def calibration_figure(y: np.ndarray, p: np.ndarray, bins: int = 10):
    """Reliability diagram: mean predicted probability against the observed rate over
    equal-frequency bins of ``p``."""
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
    fig.tight_layout()
    return fig


def plot_calibration(y: np.ndarray, p: np.ndarray, path: Path, bins: int = 10) -> Path:
    """:func:`calibration_figure` written to ``path``; returns the path."""
    return _save(calibration_figure(y, p, bins), path)


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


def importance_figure(importance: pd.DataFrame, top: int = 20):
    """The top features by gain and by mean |SHAP| (from :func:`models.explain.global_importance`),
    side by side; a linear model has no gain, and its panel is left out."""
    panels = [(c, t) for c, t in (("gain", "Gain"), ("mean_abs_shap", "Mean |SHAP| (log-odds)"))]
    panels = [(c, t) for c, t in panels if importance[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        part = importance.sort_values(column, ascending=False).head(top).iloc[::-1]
        ax.barh(part["label"], part[column], color="#3b7dd8")
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def plot_importance(importance: pd.DataFrame, path: Path, top: int = 20) -> Path:
    """:func:`importance_figure` written to ``path``; returns the path."""
    return _save(importance_figure(importance, top), path)


def beeswarm_figure(
    contributions: np.ndarray, values: np.ndarray, labels: list[str], top: int = 15, title: str = ""
):
    """SHAP summary (beeswarm) with the ``shap`` library: one dot per profile and feature at its
    contribution (log-odds), coloured by the feature's value, the ``top`` features by mean
    |SHAP|. ``contributions``: (n, features + 1), the bias last; ``values``: (n, features)
    numbers as the model saw them (category codes for categoricals)."""
    try:
        import shap
    except ImportError:  # pragma: no cover - the notebooks extra brings it
        raise ImportError("the SHAP summary plot needs shap: pip install 'propensity[notebooks]'") from None
    explanation = shap.Explanation(
        values=contributions[:, :-1],
        base_values=contributions[:, -1],
        data=values,
        feature_names=list(labels),
    )
    fig = plt.figure()  # shap draws on the current axes: a fresh figure's
    shap.plots.beeswarm(explanation, max_display=top + 1, show=False)
    fig.set_size_inches(9, 0.35 * (top + 1) + 1.5)
    if title:
        fig.axes[0].set_title(title)
    fig.tight_layout()
    return fig
