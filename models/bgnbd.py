"""The BG/NBD model (Fader, Hardie & Lee 2005): repeat purchases of customers who may drop out.

While alive a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``; after
each purchase they drop out with probability ``p ~ Beta(a, b)``. The four parameters are fitted
by maximum likelihood (scipy) on customers' (x, t_x, T): repeat purchase days, the age at the
last purchase and the age now, in days since the first purchase.

Because a customer alive now stays alive until their next purchase, the chance of at least
one purchase in the next ``t`` days has a closed form:
``P(alive) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters (time in days)."""

    r: float
    alpha: float
    a: float
    b: float

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Probability that each customer has not dropped out by ``T``."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = (
                np.log(self.a)
                - np.log(np.maximum(self.b + x - 1, 1e-12))
                + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
            )
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_ratio, 700))), 1.0)

    def purchase_probability(
        self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon_days: float
    ) -> np.ndarray:
        """Probability of at least one purchase in the next ``horizon_days`` days."""
        x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
        none_if_alive = np.exp(
            (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon_days))
        )
        return self.p_alive(x, t_x, T) * (1.0 - none_if_alive)


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Each customer's BG/NBD log-likelihood at ``params`` = (r, alpha, a, b)."""
    r, alpha, a, b = params
    common = (
        gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        + gammaln(a + b)
        + gammaln(b + x)
        - gammaln(b)
        - gammaln(a + b + x)
    )
    still_alive = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        dropped = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return common + np.logaddexp(still_alive, dropped)


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray | None = None) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters for customers' (x, t_x, T) (days, T > 0).

    Optimised over log-parameters (L-BFGS-B, bounded), from r = a = b = 1 and alpha = mean T.
    Deterministic: no random start. ``weights``: each customer's sampling weight (sampled
    training, :mod:`propensity.core.sampling`); None: all 1.
    """
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if len(x) == 0 or np.any(T <= 0) or np.any(t_x > T) or np.any(x < 0):
        raise ValueError("BG/NBD needs customers with x >= 0 and 0 <= t_x <= T, T > 0")

    def objective(log_params: np.ndarray) -> float:
        return -float(np.average(log_likelihood(np.exp(log_params), x, t_x, T), weights=weights))

    start = np.log([1.0, max(float(np.mean(T)), 1.0), 1.0, 1.0])
    result = minimize(objective, start, method="L-BFGS-B", bounds=[(-9.0, 9.0)] * 4)
    r, alpha, a, b = np.exp(result.x)
    return BgNbd(float(r), float(alpha), float(a), float(b))
