"""The Markov removal effect, exact (see :mod:`.attribution` for how it is reported).

Consecutive repeats collapse (a first-order chain's absorption probabilities do not depend on
self-loops). States: start, one per channel, conversion, null. With ``Q`` the transitions among
transient states and ``r`` those into conversion, the probability of converting from each state
is ``x = (I - Q)^{-1} r``, one linear solve; removing channel ``c`` makes every transition into
``c`` end in null, i.e. the same solve with ``c``'s row and column dropped.
``removal_effect_c = 1 - P_without_c / P``. No simulation: the same data always gives the same
credit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from propensity.features.journeys.touches import Paths


@dataclass(frozen=True)
class ChainCounts:
    """Transitions of the collapsed paths, grouped: ``pairs[k]`` = (from, to) state codes and
    ``path_of[k]`` the path each transition belongs to (for reweighting in the bootstrap)."""

    states: int  # start = 0, channels 1..C, conversion C+1, null C+2
    codes: np.ndarray  # from * states + to, per transition
    path_of: np.ndarray


def chain_transitions(paths: Paths) -> ChainCounts:
    """Every transition of every path: start -> touches (repeats collapsed) -> conversion / null."""
    c = len(paths.channels)
    states, conv, null = c + 3, c + 1, c + 2
    tp, tc = paths.touch_path, paths.touch_channel + 1
    keep = np.r_[True, (tp[1:] != tp[:-1]) | (tc[1:] != tc[:-1])] if len(tp) else np.zeros(0, bool)
    tp, tc = tp[keep], tc[keep]
    new_path = np.r_[True, tp[1:] != tp[:-1]] if len(tp) else np.zeros(0, bool)
    # Each touch's predecessor: start for a path's first touch, else the touch before.
    previous = np.where(new_path, 0, np.r_[0, tc[:-1]])
    ends = np.r_[~new_path[1:], False] if len(tp) else np.zeros(0, bool)
    last_of_path = ~ends
    n = paths.n_paths
    absorbed = np.where(paths.converted, conv, null)
    touched = np.zeros(n, dtype=bool)
    touched[tp] = True
    untouched = np.flatnonzero(~touched)
    codes = np.concatenate(
        [
            previous * states + tc,
            tc[last_of_path] * states + absorbed[tp[last_of_path]],
            0 * states + absorbed[untouched],
        ]
    ).astype(np.int64)
    path_of = np.concatenate([tp, tp[last_of_path], untouched]).astype(np.int64)
    return ChainCounts(states=states, codes=codes, path_of=path_of)


def removal_effects(counts: np.ndarray, channels: int) -> tuple[float, np.ndarray]:
    """Conversion probability of the chain and each channel's removal effect, exactly.

    ``counts``: transition counts, (states, states), states = start, channels, conversion, null.
    """
    states = channels + 3
    counts = counts.reshape(states, states)
    transient = channels + 1
    out = counts[:transient].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(out[:, None] > 0, counts[:transient] / out[:, None], 0.0)
    q, r = p[:, :transient], p[:, channels + 1]

    def converting(keep: np.ndarray) -> float:
        a = np.eye(len(keep)) - q[np.ix_(keep, keep)]
        return float(np.linalg.solve(a, r[keep])[0])  # keep[0] is start

    everything = np.arange(transient)
    base = converting(everything)
    effects = np.zeros(channels)
    if base <= 0:
        return base, effects
    for ch in range(channels):
        effects[ch] = 1.0 - converting(everything[everything != ch + 1]) / base
    return base, effects
