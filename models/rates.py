"""Intervals of outcome rates: one rate (Wilson score interval) and the difference of two
independent rates (Newcombe's hybrid score interval, built from the two Wilson intervals).

Used where a rate is compared with a number or with another rate: the actual rate of a bucket
against its predicted rate (:func:`propensity.models.evaluate.bucket_table`), and a base rate
against training's (``monitor``). Wilson's interval stays inside [0, 1] and keeps close to its
nominal coverage for rare outcomes and small buckets, where the normal approximation does not.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054


def wilson_interval(positives: float, rows: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``positives / rows`` (NaNs when there are no rows)."""
    if rows <= 0:
        return math.nan, math.nan
    rate = positives / rows
    denominator = 1 + z * z / rows
    centre = (rate + z * z / (2 * rows)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / rows + z * z / (4 * rows * rows)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference_interval(
    positives: float, rows: float, reference_positives: float, reference_rows: float, z: float = Z_95
) -> tuple[float, float]:
    """Newcombe's interval of ``positives / rows - reference_positives / reference_rows`` for
    two independent samples (method 10 of Newcombe, 1998)."""
    if rows <= 0 or reference_rows <= 0:
        return math.nan, math.nan
    p1, p2 = positives / rows, reference_positives / reference_rows
    l1, u1 = wilson_interval(positives, rows, z)
    l2, u2 = wilson_interval(reference_positives, reference_rows, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high
