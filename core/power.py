"""Power of a holdout comparison: the smallest lift it can detect, and the holdout a lift needs.

Two-sided test of two proportions with unpooled variances (normal approximation; the test
``measure`` makes with its bootstrap standard error): a holdout of ``n_h`` against ``n_t``
targeted detects, with probability ``power`` at level ``alpha``, an absolute lift ``d`` when

    d >= (z(1 - alpha/2) + z(power)) * sqrt((p + d) (1 - p - d) / n_t + p (1 - p) / n_h)

where ``p`` is the outcome rate without the campaign; the smallest such ``d`` is found by
fixed-point iteration from the equal-variance value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

_Z = NormalDist()


def _z_sum(alpha: float, power: float) -> float:
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    return _Z.inv_cdf(1 - alpha / 2) + _Z.inv_cdf(power)


def minimum_detectable_lift(
    baseline_rate: float, targeted: int, holdout: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest absolute lift in the outcome rate detectable with these arm sizes."""
    if targeted < 1 or holdout < 1:
        return math.inf
    p = min(max(baseline_rate, 1e-9), 1 - 1e-9)
    z = _z_sum(alpha, power)
    lift = z * math.sqrt(p * (1 - p) * (1 / targeted + 1 / holdout))
    for _ in range(100):
        treated = min(p + lift, 1 - 1e-9)
        updated = z * math.sqrt(treated * (1 - treated) / targeted + p * (1 - p) / holdout)
        if abs(updated - lift) < 1e-12:
            break
        lift = updated
    return lift


def required_holdout(
    baseline_rate: float, lift: float, audience: int, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """The smallest holdout (out of ``audience`` members) that detects an absolute ``lift``;
    None when even an even split cannot."""
    if lift <= 0:
        raise ValueError(f"the lift to detect must be positive, got {lift}")
    if minimum_detectable_lift(baseline_rate, audience - audience // 2, audience // 2, alpha, power) > lift:
        return None
    low, high = 1, audience // 2  # the detectable lift shrinks as the holdout grows up to half
    while low < high:
        mid = (low + high) // 2
        if minimum_detectable_lift(baseline_rate, audience - mid, mid, alpha, power) <= lift:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass(frozen=True)
class PowerPlan:
    """What a holdout can show before the campaign runs."""

    audience: int
    holdout_share: float
    targeted: int
    holdout: int
    baseline_rate: float
    alpha: float
    power: float
    minimum_detectable_lift: float  # absolute
    minimum_detectable_relative_lift: float
    expected_lift: float | None  # the lift hoped for, when given
    holdout_needed: int | None  # for expected_lift (None: not given, or not reachable)

    def as_dict(self) -> dict:
        return asdict(self)


def plan(
    audience: int,
    holdout_share: float,
    baseline_rate: float,
    expected_lift: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PowerPlan:
    """The power of holding out ``holdout_share`` of ``audience`` at this baseline rate."""
    holdout = round(audience * holdout_share)
    mde = minimum_detectable_lift(baseline_rate, audience - holdout, holdout, alpha, power)
    return PowerPlan(
        audience=audience,
        holdout_share=holdout_share,
        targeted=audience - holdout,
        holdout=holdout,
        baseline_rate=baseline_rate,
        alpha=alpha,
        power=power,
        minimum_detectable_lift=mde,
        minimum_detectable_relative_lift=mde / baseline_rate if baseline_rate > 0 else math.inf,
        expected_lift=expected_lift,
        holdout_needed=(
            required_holdout(baseline_rate, expected_lift, audience, alpha, power) if expected_lift else None
        ),
    )
