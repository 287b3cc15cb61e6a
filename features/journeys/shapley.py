"""Shapley values over channel sets, exact (see :mod:`.attribution` for how they are reported).

Paths are counted by the set of channels they touch (a bit mask); the value of a coalition ``S``
is the conversion rate of the paths whose channels all lie in ``S`` (``S``'s subsets summed by a
zeta transform over ``2^C`` masks, so every coalition has a value as long as some path
qualifies). The Shapley value of channel ``i`` is the exact weighted sum of ``v(S + i) - v(S)``
over all ``2^(C-1)`` coalitions without it; the values add up to ``v(all) - v(none)``, the
conversion rate the touchpoints add, and times the number of paths they are incremental
conversions. Exact up to :data:`MAX_SHAPLEY_CHANNELS` channels (``2^C`` masks in memory),
beyond the four at which common implementations stop.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from propensity.features.journeys.touches import Paths

MAX_SHAPLEY_CHANNELS = 24


@numba.njit(cache=True)
def _subset_sums(values: np.ndarray, bits: int) -> None:  # pragma: no cover - compiled
    """In place: values[S] <- sum of values[T] over T subset of S (zeta transform)."""
    size = values.shape[0]
    for b in range(bits):
        bit = 1 << b
        for s in range(size):
            if s & bit:
                values[s] += values[s ^ bit]


@numba.njit(cache=True)
def _shapley(value: np.ndarray, bits: int, weight: np.ndarray) -> np.ndarray:  # pragma: no cover
    """phi_i = sum over S without i of weight[|S|] * (value[S | i] - value[S])."""
    phi = np.zeros(bits)
    size = value.shape[0]
    for s in range(size):
        k = 0
        x = s
        while x:
            x &= x - 1
            k += 1
        if k == bits:
            continue
        w = weight[k]
        vs = value[s]
        for i in range(bits):
            bit = 1 << i
            if not s & bit:
                phi[i] += w * (value[s | bit] - vs)
    return phi


def channel_sets(paths: Paths) -> np.ndarray:
    """Each path's set of channels as a bit mask (bit c = channel code c)."""
    masks = np.zeros(paths.n_paths, dtype=np.int64)
    np.bitwise_or.at(masks, paths.touch_path, np.left_shift(1, paths.touch_channel))
    return masks


def shapley_weights(bits: int) -> np.ndarray:
    """|S|! (n - |S| - 1)! / n! for |S| = 0 .. n-1."""
    return np.array(
        [math.exp(math.lgamma(k + 1) + math.lgamma(bits - k) - math.lgamma(bits + 1)) for k in range(bits)]
    )


def shapley_values(conversions: np.ndarray, totals: np.ndarray, bits: int) -> np.ndarray:
    """Exact Shapley values of the game v(S) = conversion rate of the paths whose channel set
    lies in S. ``conversions`` / ``totals``: per exact channel set (length 2^bits)."""
    conv, tot = conversions.astype(np.float64).copy(), totals.astype(np.float64).copy()
    _subset_sums(conv, bits)
    _subset_sums(tot, bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(tot > 0, conv / np.where(tot > 0, tot, 1), 0.0)
    return _shapley(value, bits, shapley_weights(bits))


def shapley_brute_force(conversions: dict[int, float], totals: dict[int, float], bits: int) -> np.ndarray:
    """The same values by the permutation definition (every order of the channels): for tests."""
    from itertools import permutations

    def v(s: int) -> float:
        conv = sum(c for m, c in conversions.items() if m & ~s == 0)
        tot = sum(t for m, t in totals.items() if m & ~s == 0)
        return conv / tot if tot else 0.0

    phi = np.zeros(bits)
    orders = list(permutations(range(bits)))
    for order in orders:
        s = 0
        for i in order:
            phi[i] += v(s | (1 << i)) - v(s)
            s |= 1 << i
    return phi / len(orders)
