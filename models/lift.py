"""Lift of a campaign measured against its holdout: raw and regression-adjusted, with bootstrap intervals.

Each member is in the ``targeted`` or the ``holdout`` arm and has an outcome over the horizon
(``converted``, ``revenue``) and optional pre-period covariates (features as of the campaign).
:func:`measure_lift` reports, per arm, the outcome rate, revenue per member and order value,
and for targeted vs holdout: absolute and relative lift, incremental conversions and revenue
(the difference per member times the targeted members), the order-value difference and, when
a cost is given, the return on spend ((incremental revenue - cost) / cost).

The regression-adjusted (CUPED-style) estimate removes from each arm's mean the part the
pre-period explains: ``diff - theta' (x_targeted - x_holdout)`` with ``theta`` the pooled
least-squares slope of the outcome on the covariates. With random assignment it estimates
the same lift, with less variance the more the pre-period predicts the outcome.

Intervals: a Poisson bootstrap (each row weighted by an independent Poisson(1) count, the
large-sample equivalent of drawing rows with replacement; each arm's size varies as its own
resample would), seeded. Every figure is a function of a few weighted sums per arm (count,
outcomes, covariates and their cross products), so all resamples are computed at once: a
weight matrix (resamples x rows, in row chunks) times the rows' sums matrix. The weights
come from 16-bit random numbers through a Poisson(1) quantile table (exact to 2^-16).
Past 50,000 rows an arm's resampled sums are drawn from their large-sample (normal)
distribution with the same mean and covariance (see ``_resampled_sums``).
The test of each difference is a Wald test with the bootstrap standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROW_CHUNK_CELLS = 1 << 23  # weights per chunk (resamples x rows): 64 MiB of float64
_LEVEL = 0.95


def _poisson_table() -> np.ndarray:
    """Poisson(1) counts indexed by a 16-bit uniform: value k for the 2^16 * P(K = k) codes."""
    cdf, k, term, total = [], 0, math.exp(-1.0), 0.0
    while total < 1 - 2**-17:
        total += term
        cdf.append(total)
        k += 1
        term /= k
    edges = np.round(np.array(cdf) * (1 << 16)).astype(np.int64)
    return np.searchsorted(edges, np.arange(1 << 16), side="right").astype(np.float64)


_POISSON = _poisson_table()


@dataclass(frozen=True)
class Estimate:
    """One figure: the estimate on the data, its bootstrap interval and (for a difference) the
    two-sided p-value of 'no difference'."""

    metric: str
    estimate: float
    low: float
    high: float
    p_value: float | None = None


@dataclass
class Arms:
    """The members being compared (arrays of one length): arm, outcomes, covariates (rows x p)."""

    targeted: np.ndarray  # bool: True = targeted, False = holdout
    converted: np.ndarray  # bool or 0/1
    revenue: np.ndarray  # over the horizon, 0 without a purchase
    covariates: np.ndarray | None = None  # pre-period features, rows x p (None: no adjustment)

    def __post_init__(self) -> None:
        self.targeted = np.asarray(self.targeted, bool)
        self.converted = np.asarray(self.converted, np.float64)
        self.revenue = np.nan_to_num(np.asarray(self.revenue, np.float64))
        if self.covariates is not None:
            cov = np.nan_to_num(np.asarray(self.covariates, np.float64))
            cov = cov.reshape(len(cov), -1)
            # Standardised: cross products stay well conditioned (the adjustment is unchanged).
            scale = cov.std(axis=0)
            self.covariates = (cov - cov.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _sums_columns(arms: Arms, rows: np.ndarray) -> np.ndarray:
    """The per-row terms whose sums every figure is a function of:
    1, y, r, then (with covariates) x, x x' (upper triangle), x y, x r."""
    y, r = arms.converted[rows], arms.revenue[rows]
    columns = [np.ones(len(rows)), y, r]
    if arms.covariates is not None:
        x = arms.covariates[rows]
        p = x.shape[1]
        columns += [x[:, i] for i in range(p)]
        columns += [x[:, i] * x[:, j] for i in range(p) for j in range(i, p)]
        columns += [x[:, i] * y for i in range(p)] + [x[:, i] * r for i in range(p)]
    return np.column_stack(columns)


def _resampled_sums(
    terms: np.ndarray, resamples: int, rng: np.random.Generator, exact_rows: int = 50_000
) -> np.ndarray:
    """(resamples + 1) x k: row 0 the plain sums, then one row per Poisson-bootstrap resample.

    Past ``exact_rows`` rows the resampled sums are drawn from their large-sample distribution
    instead of weighting every row: a Poisson bootstrap's sums have mean ``sum(z)`` and
    covariance ``sum(z z')`` (independent weights of mean and variance 1), and a sum of so many
    independent terms is normal to well within the interval's own Monte-Carlo error. Weighting
    a million rows a thousand times would take minutes; this takes milliseconds."""
    out = np.zeros((resamples + 1, terms.shape[1]))
    out[0] = terms.sum(axis=0)
    if len(terms) > exact_rows:
        out[1:] = rng.multivariate_normal(out[0], terms.T @ terms, size=resamples, method="eigh")
        return out
    step = max(1, ROW_CHUNK_CELLS // max(resamples, 1))
    for start in range(0, len(terms), step):
        block = terms[start : start + step]
        codes = rng.integers(0, 1 << 16, size=(resamples, len(block)), dtype=np.uint16)
        out[1:] += _POISSON[codes] @ block
    return out


def _arm_means(sums: np.ndarray, p: int) -> dict[str, np.ndarray]:
    n = np.maximum(sums[:, 0], 1e-12)
    means = {"n": sums[:, 0], "y": sums[:, 1] / n, "r": sums[:, 2] / n, "conversions": sums[:, 1]}
    if p:
        means["x"] = sums[:, 3 : 3 + p] / n[:, None]
    return means


def _pooled_slopes(st: np.ndarray, sh: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slopes of y and r on x over both arms (each resample): theta_y, theta_r (B x p)."""
    s = st + sh
    n = s[:, 0][:, None]
    mx = s[:, 3 : 3 + p] / n
    iu = np.triu_indices(p)
    exx = np.zeros((len(s), p, p))
    exx[:, iu[0], iu[1]] = s[:, 3 + p : 3 + p + len(iu[0])] / n
    exx = exx + np.triu(exx, 1).transpose(0, 2, 1)
    cov_xx = exx - mx[:, :, None] * mx[:, None, :]
    base = 3 + p + len(iu[0])
    cov_xy = s[:, base : base + p] / n - mx * (s[:, 1] / s[:, 0])[:, None]
    cov_xr = s[:, base + p : base + 2 * p] / n - mx * (s[:, 2] / s[:, 0])[:, None]
    ridge = 1e-9 * np.trace(cov_xx, axis1=1, axis2=2)[:, None, None] * np.eye(p) + 1e-12 * np.eye(p)
    solved = np.linalg.solve(cov_xx + ridge, np.stack([cov_xy, cov_xr], axis=2))
    return solved[:, :, 0], solved[:, :, 1]


def _figures(st: np.ndarray, sh: np.ndarray, p: int, cost: float | None) -> dict[str, np.ndarray]:
    """Every figure, for each row of the arms' sums (row 0: the data; others: resamples)."""
    t, h = _arm_means(st, p), _arm_means(sh, p)
    n_targeted = st[0, 0]  # incremental totals scale the per-member lift to the targeted members
    with np.errstate(invalid="ignore", divide="ignore"):
        order_t, order_h = st[:, 2] / st[:, 1], sh[:, 2] / sh[:, 1]
        figures = {
            "targeted_rate": t["y"],
            "holdout_rate": h["y"],
            "targeted_revenue_per_member": t["r"],
            "holdout_revenue_per_member": h["r"],
            "targeted_order_value": order_t,
            "holdout_order_value": order_h,
            "absolute_lift": t["y"] - h["y"],
            "relative_lift": (t["y"] - h["y"]) / h["y"],
            "incremental_conversions": (t["y"] - h["y"]) * n_targeted,
            "revenue_per_member_lift": t["r"] - h["r"],
            "incremental_revenue": (t["r"] - h["r"]) * n_targeted,
            "order_value_lift": order_t - order_h,
        }
        if cost is not None:
            figures["return_on_spend"] = (figures["incremental_revenue"] - cost) / cost
        if p:
            theta_y, theta_r = _pooled_slopes(st, sh, p)
            gap = t["x"] - h["x"]
            adjusted = t["y"] - h["y"] - (theta_y * gap).sum(axis=1)
            adjusted_r = t["r"] - h["r"] - (theta_r * gap).sum(axis=1)
            figures |= {
                "adjusted_absolute_lift": adjusted,
                "adjusted_relative_lift": adjusted / h["y"],
                "adjusted_incremental_conversions": adjusted * n_targeted,
                "adjusted_revenue_per_member_lift": adjusted_r,
                "adjusted_incremental_revenue": adjusted_r * n_targeted,
            }
            if cost is not None:
                figures["adjusted_return_on_spend"] = (adjusted_r * n_targeted - cost) / cost
    return figures


ARM_FIGURES = (
    "targeted_rate",
    "holdout_rate",
    "targeted_revenue_per_member",
    "holdout_revenue_per_member",
    "targeted_order_value",
    "holdout_order_value",
)


def _estimate(metric: str, values: np.ndarray) -> Estimate:
    point, resampled = float(values[0]), values[1:]
    resampled = resampled[np.isfinite(resampled)]
    if not np.isfinite(point) or len(resampled) < 2:
        return Estimate(metric, point, math.nan, math.nan, None)
    tail = (1 - _LEVEL) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    p_value = None
    if metric not in ARM_FIGURES:
        # return_on_spend's null is 'no incremental revenue', i.e. -1, not 0.
        null = -1.0 if metric.endswith("return_on_spend") else 0.0
        se = float(resampled.std(ddof=1))
        p_value = (
            math.erfc(abs(point - null) / se / math.sqrt(2)) if se > 0 else (1.0 if point == null else 0.0)
        )
    return Estimate(metric, point, float(low), float(high), p_value)


def measure_lift(
    arms: Arms, resamples: int = 1000, seed: int = 0, cost: float | None = None, exact_rows: int = 50_000
) -> list[Estimate]:
    """Every figure of targeted vs holdout with its bootstrap interval (see the module doc).

    ``cost``: what the campaign cost (adds return on spend). Needs members in both arms. Arms
    over ``exact_rows`` rows draw their resampled sums from the bootstrap's large-sample
    distribution (see ``_resampled_sums``)."""
    targeted, holdout = np.flatnonzero(arms.targeted), np.flatnonzero(~arms.targeted)
    if len(targeted) == 0 or len(holdout) == 0:
        raise ValueError(f"both arms need members: {len(targeted)} targeted, {len(holdout)} holdout")
    p = 0 if arms.covariates is None else arms.covariates.shape[1]
    rng = np.random.default_rng(seed)
    st = _resampled_sums(_sums_columns(arms, targeted), resamples, rng, exact_rows)
    sh = _resampled_sums(_sums_columns(arms, holdout), resamples, rng, exact_rows)
    return [_estimate(metric, values) for metric, values in _figures(st, sh, p, cost).items()]
