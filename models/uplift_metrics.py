"""How well an uplift ranking finds the people a contact changes: Qini, uplift at k, and the
incremental conversions of targeting the top k % by one ranking against another.

Every figure is measured on rows with a known arm (``treated`` 1 or 0) and outcome (``y`` 1 or
0), ranked by a score, highest first (ties in row order: a stable sort). Intervals are
percentile intervals over seeded bootstrap resamples of the rows (the rankings stay fixed: a
resample asks what the same targeting rule would have yielded on another draw of people).

- **Qini curve** at depth k: ``Y_t(k) - Y_c(k) * N_t(k) / N_c(k)``, the conversions among the
  treated in the top k less the control conversions scaled to as many people (Radcliffe 2007).
- **Qini coefficient**: the mean over depths of the curve's height above the random-targeting line
  (the straight line from 0 to the curve's end), divided by the number of rows: incremental
  conversions per profile, averaged over every targeting depth. 0 is random, higher is better.
- **Uplift at k**: the treated rate less the control rate among the top ``fraction``.
- **Incremental conversions at k**: uplift at k times the number of people in the top ``fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from propensity.models.bootstrap import resample_weights


def _order(score: np.ndarray) -> np.ndarray:
    """Rows by descending score, ties in row order."""
    return np.argsort(-np.asarray(score, dtype=float), kind="stable")


def qini_coefficients(
    y: np.ndarray, treated: np.ndarray, score: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The Qini coefficient of ``score`` under each column of ``weights`` (rows x resamples; a
    column of ones is the sample itself)."""
    order = _order(score)
    w = weights[order]
    t = np.asarray(treated, dtype=float)[order][:, None]
    yy = np.asarray(y, dtype=float)[order][:, None]
    n_t, n_c = np.cumsum(w * t, axis=0), np.cumsum(w * (1 - t), axis=0)
    y_t, y_c = np.cumsum(w * t * yy, axis=0), np.cumsum(w * (1 - t) * yy, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = np.where(n_c > 0, y_t - y_c * n_t / n_c, y_t)
    people = np.cumsum(w, axis=0)
    total = people[-1]
    random_line = curve[-1] * people / np.where(total > 0, total, 1)
    # The mean height over depths, each depth weighted by the people it adds.
    area = ((curve - random_line) * w).sum(axis=0) / np.where(total > 0, total, 1)
    return area / np.where(total > 0, total, 1)


def qini_coefficient(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """The Qini coefficient of ranking the rows by ``score`` (see the module docstring)."""
    return float(qini_coefficients(y, treated, score, np.ones((len(y), 1)))[0])


def _top(score: np.ndarray, fraction: float) -> np.ndarray:
    """A 0/1 mask of the top ``fraction`` of rows by ``score`` (at least one row)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    mask = np.zeros(len(score), dtype=float)
    mask[_order(score)[: max(1, round(fraction * len(score)))]] = 1.0
    return mask


def _lift(
    y: np.ndarray, treated: np.ndarray, top: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Under each column of ``weights``: the treated rate less the control rate in the ``top``
    rows (NaN where an arm is empty), and the people in the top."""
    t = np.asarray(treated, dtype=float)
    yy = np.asarray(y, dtype=float)
    w = weights * top[:, None]
    n_t, n_c = (w * t[:, None]).sum(axis=0), (w * (1 - t)[:, None]).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (w * (t * yy)[:, None]).sum(axis=0) / n_t - (w * ((1 - t) * yy)[:, None]).sum(axis=0) / n_c
    return lift, w.sum(axis=0)


def _incremental(y: np.ndarray, treated: np.ndarray, top: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Incremental conversions in the ``top`` rows under each column of ``weights``: the lift times
    the people in the top."""
    lift, people = _lift(y, treated, top, weights)
    return lift * people


def uplift_at_k(y: np.ndarray, treated: np.ndarray, score: np.ndarray, fraction: float) -> float:
    """Treated rate less control rate among the top ``fraction`` of rows by ``score``."""
    return float(_lift(y, treated, _top(score, fraction), np.ones((len(y), 1)))[0][0])


@dataclass(frozen=True)
class Estimate:
    """A figure with its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def record(self, prefix: str) -> dict[str, float]:
        """``prefix``, ``prefix_low``, ``prefix_high`` -> the figures (MLflow metric names)."""
        return {prefix: self.value, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


def _estimate(value: float, draws: np.ndarray, level: float) -> Estimate:
    tail = 100 * (1 - level) / 2
    return Estimate(
        float(value), float(np.nanpercentile(draws, tail)), float(np.nanpercentile(draws, 100 - tail))
    )


@dataclass(frozen=True)
class UpliftEvaluation:
    """An uplift ranking measured against a propensity ranking on rows with known arms."""

    rows: int
    treated: int
    positives: int
    fraction: float
    qini: Estimate
    uplift_at_k: Estimate
    incremental_uplift: Estimate  # incremental conversions of targeting the top fraction by uplift
    incremental_propensity: Estimate  # ... by propensity
    incremental_difference: Estimate  # uplift's less propensity's, on the same resamples
    oracle_qini: float | None = None  # the Qini of the true effects' ranking (simulated data)
    # Simulated data: the expected incremental conversions (the sum of the people's true
    # effects) of each targeting, and uplift's less propensity's, on the same resamples.
    true_incremental_uplift: Estimate | None = None
    true_incremental_propensity: Estimate | None = None
    true_incremental_difference: Estimate | None = None

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat figures for MLflow (``<prefix>qini``, ``..._low``, ``..._high`` ...)."""
        k = round(100 * self.fraction)
        out = {
            f"{prefix}uplift_rows": float(self.rows),
            f"{prefix}uplift_treated": float(self.treated),
            f"{prefix}uplift_positives": float(self.positives),
            **self.qini.record(f"{prefix}qini"),
            **self.uplift_at_k.record(f"{prefix}uplift_at_{k}"),
            **self.incremental_uplift.record(f"{prefix}incremental_top{k}_by_uplift"),
            **self.incremental_propensity.record(f"{prefix}incremental_top{k}_by_propensity"),
            **self.incremental_difference.record(f"{prefix}incremental_top{k}_uplift_minus_propensity"),
        }
        if self.oracle_qini is not None:
            out[f"{prefix}oracle_qini"] = self.oracle_qini
        truths = {
            "by_uplift": self.true_incremental_uplift,
            "by_propensity": self.true_incremental_propensity,
            "uplift_minus_propensity": self.true_incremental_difference,
        }
        for name, estimate in truths.items():
            if estimate is not None:
                out |= estimate.record(f"{prefix}true_incremental_top{k}_{name}")
        return out


def evaluate_uplift(
    y: np.ndarray,
    treated: np.ndarray,
    uplift: np.ndarray,
    propensity: np.ndarray,
    *,
    fraction: float = 0.2,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    true_effect: np.ndarray | None = None,
) -> UpliftEvaluation:
    """Qini, uplift at ``fraction`` and the incremental conversions of targeting the top
    ``fraction`` by ``uplift`` against the top ``fraction`` by ``propensity``, each with its
    ``level`` interval over ``resamples`` seeded resamples; with ``true_effect`` (simulated
    data), also the oracle's Qini: the same rows ranked by each person's true effect."""
    y, treated = np.asarray(y, dtype=float), np.asarray(treated, dtype=float)
    if not (len(y) == len(treated) == len(uplift) == len(propensity)):
        raise ValueError("y, treated, uplift and propensity must have one value per row")
    by_uplift, by_propensity = _top(np.asarray(uplift), fraction), _top(np.asarray(propensity), fraction)
    ones = np.ones((len(y), 1))
    draws: dict[str, list[np.ndarray]] = {"qini": [], "lift": [], "uplift": [], "propensity": []}
    effect = None if true_effect is None else np.asarray(true_effect, dtype=float)
    for weights in resample_weights(len(y), resamples, seed):
        if effect is not None:  # expected incremental conversions: the true effects summed
            draws.setdefault("true_uplift", []).append((by_uplift * effect) @ weights)
            draws.setdefault("true_propensity", []).append((by_propensity * effect) @ weights)
        draws["qini"].append(qini_coefficients(y, treated, uplift, weights))
        lift, people = _lift(y, treated, by_uplift, weights)
        draws["lift"].append(lift)
        draws["uplift"].append(lift * people)
        draws["propensity"].append(_incremental(y, treated, by_propensity, weights))
    d = {name: np.concatenate(values) for name, values in draws.items()}
    inc_uplift = float(_incremental(y, treated, by_uplift, ones)[0])
    inc_propensity = float(_incremental(y, treated, by_propensity, ones)[0])
    return UpliftEvaluation(
        rows=len(y),
        treated=int(treated.sum()),
        positives=int(y.sum()),
        fraction=fraction,
        qini=_estimate(qini_coefficient(y, treated, uplift), d["qini"], level),
        uplift_at_k=_estimate(inc_uplift / by_uplift.sum(), d["lift"], level),
        incremental_uplift=_estimate(inc_uplift, d["uplift"], level),
        incremental_propensity=_estimate(inc_propensity, d["propensity"], level),
        incremental_difference=_estimate(inc_uplift - inc_propensity, d["uplift"] - d["propensity"], level),
        oracle_qini=None if effect is None else qini_coefficient(y, treated, effect),
        **({} if effect is None else _true_incremental(effect, by_uplift, by_propensity, d, level)),
    )


def _true_incremental(
    effect: np.ndarray, by_uplift: np.ndarray, by_propensity: np.ndarray, d: dict, level: float
) -> dict[str, Estimate]:
    """The true-effect figures of :class:`UpliftEvaluation` from their resampled draws ``d``."""
    uplift, propensity = float(by_uplift @ effect), float(by_propensity @ effect)
    return {
        "true_incremental_uplift": _estimate(uplift, d["true_uplift"], level),
        "true_incremental_propensity": _estimate(propensity, d["true_propensity"], level),
        "true_incremental_difference": _estimate(
            uplift - propensity, d["true_uplift"] - d["true_propensity"], level
        ),
    }
