"""Bootstrap intervals for test metrics: how much a figure could move on another sample.

Every score is measured on the same seeded resamples of the test rows (drawn as multinomial
counts, i.e. rows with replacement), so the differences between two scores are paired. The
metrics are computed from per-resample weights: one sort of each score, then one compiled pass
over the rows per resample (sums over tied-score groups), no sorted copy of the weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PROBABILITY_METRICS = ("brier", "log_loss")
RANKING_METRICS = ("auc", "average_precision")
CHUNK = 100  # resamples per batch: the weights matrix is CHUNK x rows


def _groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending order of ``score`` and the start of each run of equal scores in that order."""
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return order, starts


def _ranking_kernel(y_sorted, order, bounds, resampled):  # pragma: no cover - compiled
    """AUC and average precision of each row of ``resampled`` (resamples x rows: each row's
    count in that resample), the rows taken in ascending score order (``order``), tie groups
    ``bounds[g]:bounds[g + 1]`` of that order. One pass over the rows per resample: sums per tie
    group, the AUC's area as they go up, then the average precision from the top down."""
    n_resamples = resampled.shape[0]
    n_groups = len(bounds) - 1
    auc, ap = np.empty(n_resamples), np.empty(n_resamples)
    pos, neg = np.empty(n_groups), np.empty(n_groups)
    for j in range(n_resamples):
        w = resampled[j]
        total_pos = total_neg = area = 0.0
        for g in range(n_groups):
            group_pos = group_all = 0.0
            for i in range(bounds[g], bounds[g + 1]):
                weight = w[order[i]]
                group_all += weight
                group_pos += weight * y_sorted[i]
            group_neg = group_all - group_pos
            # Positives of the group above every negative below it, half above the group's own.
            area += group_pos * (total_neg + 0.5 * group_neg)
            total_pos += group_pos
            total_neg += group_neg
            pos[g], neg[g] = group_pos, group_neg
        auc[j] = area / (total_pos * total_neg)
        tp = fp = precision_sum = 0.0
        for g in range(n_groups - 1, -1, -1):  # thresholds from the highest score down
            tp += pos[g]
            fp += neg[g]
            if tp + fp > 0:
                precision_sum += pos[g] * tp / (tp + fp)
        ap[j] = precision_sum / total_pos
    return auc, ap


_COMPILED: list = []


def _compiled_kernel():
    """``_ranking_kernel`` compiled on first use: importing this module (scoring loads the
    calibrators, which use ``resample_weights``) must not import numba."""
    if not _COMPILED:
        import numba

        _COMPILED.append(numba.njit(cache=True, nogil=True, error_model="numpy")(_ranking_kernel))
    return _COMPILED[0]


def weighted_ranking_metrics(
    y: np.ndarray, score: np.ndarray, weights: np.ndarray, groups: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """AUC and average precision (sklearn's definitions, ties included) for each column of
    ``weights`` (rows x resamples): one value per resample. ``groups``: ``_groups(score)``,
    when already computed."""
    order, starts = groups if groups is not None else _groups(score)
    bounds = np.append(starts, len(order)).astype(np.int64)
    y_sorted = np.asarray(y, dtype=np.float64)[order]
    # Resample by resample: each one's counts contiguous (resample_weights yields them so).
    resampled = np.ascontiguousarray(np.asarray(weights, dtype=np.float64).T)
    auc, average_precision = _compiled_kernel()(y_sorted, order.astype(np.int64), bounds, resampled)
    return {"auc": auc, "average_precision": average_precision}


def weighted_probability_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Brier score and log loss for each column of ``weights`` (rows x resamples)."""
    p = np.clip(p, 1e-9, 1 - 1e-9)
    total = weights.sum(axis=0)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return {"brier": ((p - y) ** 2) @ weights / total, "log_loss": loss @ weights / total}


def resample_weights(n: int, resamples: int, seed: int) -> Iterable[np.ndarray]:
    """Seeded resamples of ``n`` rows as count matrices (rows x resamples), ``CHUNK`` at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        # Row indices drawn with replacement, counted per resample in one bincount; stored
        # resample by resample (the ranking kernel reads one resample's counts at a time) and
        # handed out as the rows x resamples view.
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        yield np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(float).T


def bootstrap_intervals(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    probabilities: set[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    reference: str | None = None,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile intervals of each score's metrics over ``resamples`` paired resamples.

    ``scores`` maps a name to scores of the test rows; those named in ``probabilities`` also
    get Brier and log loss. With ``reference`` (one of the names), also the interval of
    ``reference`` minus each other score, keyed ``"<reference>-<name>"``: a difference whose
    interval excludes 0 is beyond resampling noise. Returns name -> metric -> (low, high).
    """
    y = np.asarray(y, dtype=float)
    scores = {name: np.asarray(score, dtype=float) for name, score in scores.items()}
    groups = {name: _groups(score) for name, score in scores.items()}
    draws: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in scores}
    for weights in resample_weights(len(y), resamples, seed):
        for name, score in scores.items():
            values = weighted_ranking_metrics(y, score, weights, groups[name])
            if name in probabilities:
                values |= weighted_probability_metrics(y, score, weights)
            for metric, value in values.items():
                draws[name].setdefault(metric, []).append(value)
    samples = {name: {m: np.concatenate(v) for m, v in metrics.items()} for name, metrics in draws.items()}
    if reference is not None:
        for name in scores:
            if name != reference:
                shared = samples[reference].keys() & samples[name].keys()
                samples[f"{reference}-{name}"] = {m: samples[reference][m] - samples[name][m] for m in shared}
    tail = 100 * (1 - level) / 2
    return {
        name: {
            metric: (float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail)))
            for metric, v in metrics.items()
        }
        for name, metrics in samples.items()
    }


def auc_ratio_interval(
    y: np.ndarray,
    score: np.ndarray,
    reference: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of AUC(score) / AUC(reference) over paired resamples of the rows.

    Both AUCs are measured on the same resamples: rows that are hard for one are hard for
    the other, so the ratio is steadier than either AUC, and its own interval (not one
    built from the two AUCs' intervals) says whether a ratio is beyond resampling noise.
    """
    y = np.asarray(y, dtype=float)
    scores = (np.asarray(score, dtype=float), np.asarray(reference, dtype=float))
    groups = [_groups(s) for s in scores]
    ratios = []
    for weights in resample_weights(len(y), resamples, seed):
        model, oracle = (
            weighted_ranking_metrics(y, s, weights, g)["auc"] for s, g in zip(scores, groups, strict=True)
        )
        ratios.append(model / oracle)
    tail = 100 * (1 - level) / 2
    values = np.concatenate(ratios)
    return float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))
