"""The held-out test snapshot's figures: the model's metrics and the baselines', each with a bootstrap
interval, the positives they rest on, and the paired differences model minus baseline."""

from __future__ import annotations

import numpy as np

from propensity.models.bootstrap import PROBABILITY_METRICS, RANKING_METRICS, bootstrap_intervals
from propensity.models.evaluate import metrics

MODEL = "model"


def holdout_figures(
    y: np.ndarray,
    p: np.ndarray,
    baselines: dict[str, tuple[np.ndarray, bool]],
    resamples: int,
    seed: int,
    prefix: str = "test_",
) -> dict[str, float]:
    """Flat metrics for MLflow.

    ``p``: the model's probabilities; ``baselines``: name -> (scores, whether they are
    probabilities). Keys: ``{prefix}auc`` .. (:func:`evaluate.metrics`), ``{prefix}<m>_ci_low`` /
    ``_ci_high`` for AUC, average precision, Brier and log loss, ``{prefix}positives``,
    ``{prefix}rows``; ``baseline_<name>_<m>`` with the same intervals (Brier and log loss only
    for probabilities); ``{prefix}<m>_minus_baseline_<name>_ci_low`` / ``_ci_high``: the paired
    interval of the model's advantage (lower is better for Brier and log loss).
    """
    y = np.asarray(y, dtype=int)
    out = metrics(y, p, prefix=prefix)
    out[f"{prefix}positives"] = float(y.sum())
    out[f"{prefix}rows"] = float(len(y))
    scores = {MODEL: p, **{name: values for name, (values, _) in baselines.items()}}
    probabilities = {MODEL} | {name for name, (_, is_probability) in baselines.items() if is_probability}
    intervals = bootstrap_intervals(y, scores, probabilities, resamples, seed, reference=MODEL)
    for metric, (low, high) in intervals[MODEL].items():
        out[f"{prefix}{metric}_ci_low"], out[f"{prefix}{metric}_ci_high"] = low, high
    for name, (values, is_probability) in baselines.items():
        point = metrics(y, values if is_probability else _as_probability(values), prefix="")
        kept = RANKING_METRICS + (PROBABILITY_METRICS if is_probability else ())
        for metric in kept:
            out[f"baseline_{name}_{metric}"] = point[metric]
            low, high = intervals[name][metric]
            out[f"baseline_{name}_{metric}_ci_low"], out[f"baseline_{name}_{metric}_ci_high"] = low, high
            low, high = intervals[f"{MODEL}-{name}"][metric]
            out[f"{prefix}{metric}_minus_baseline_{name}_ci_low"] = low
            out[f"{prefix}{metric}_minus_baseline_{name}_ci_high"] = high
        out[f"baseline_{name}_lift_at_10"] = point["lift_at_10"]
    return out


def _as_probability(score: np.ndarray) -> np.ndarray:
    """A monotone squash of a ranking score into (0, 1), ties kept: ranking metrics unchanged."""
    unique = np.unique(score)
    return (np.searchsorted(unique, score) + 1.0) / (len(unique) + 1.0)
