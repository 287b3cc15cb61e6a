"""Attribution: credit for an outcome across the touchpoints (channel or campaign) before it,
under every method, from the touchpoint paths of :mod:`.touches`.

**Rules.** ``first``, ``last``, ``linear`` (equal shares of every touch), ``time_decay``
(a touch ``d`` before the conversion weighs ``2^(-d / half_life)``), ``position`` (40 % first,
40 % last, 20 % shared by the middle; one touch takes all, two split evenly). Rules see
converters only.

**Data-driven.** The exact Markov removal effect (:mod:`.markov`) and exact Shapley values over
channel sets (:mod:`.shapley`). Their credit is reported as a share of the touched conversions,
like the rules, with the raw removal effects and Shapley values beside it.

**Intervals.** Bootstrap intervals resample profiles (multinomial weights; seeded) and
recompute every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from propensity.core.errors import UserError
from propensity.features.journeys.markov import chain_transitions, removal_effects
from propensity.features.journeys.shapley import MAX_SHAPLEY_CHANNELS, channel_sets, shapley_values
from propensity.features.journeys.touches import MICROS, Paths

RULES = ("first", "last", "linear", "time_decay", "position")
METHODS = (*RULES, "markov", "shapley")


def rule_weights(paths: Paths, half_life_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Per touch of a converting path: its index into the touches, and its weight under each
    rule (columns in :data:`RULES` order; each converting path's weights sum to 1 per rule)."""
    keep = np.flatnonzero(paths.converted[paths.touch_path])
    path = paths.touch_path[keep]
    if len(keep) == 0:
        return keep, np.zeros((0, len(RULES)))
    starts = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
    counts = np.diff(np.r_[starts, len(path)])
    n = np.repeat(counts, counts).astype(float)
    pos = np.arange(len(path)) - np.repeat(starts, counts)
    first = (pos == 0).astype(float)
    last = (pos == n - 1).astype(float)
    linear = 1.0 / n
    age = (paths.converted_at[path] - paths.touch_time[keep]) / MICROS
    decay = np.exp2(-age / half_life_seconds)
    decay_sum = np.add.reduceat(decay, starts)
    decay /= np.repeat(decay_sum, counts)
    position = np.where(n == 1, 1.0, np.where(n == 2, 0.5, np.where((pos == 0) | (pos == n - 1), 0.4, 0.0)))
    middle = n > 2
    position[middle & (pos > 0) & (pos < n - 1)] = 0.2 / (n[middle & (pos > 0) & (pos < n - 1)] - 2)
    return keep, np.column_stack([first, last, linear, decay, position])


@dataclass
class Attribution:
    """Credit per channel and method (touched conversions shared out), with intervals."""

    credit: pd.DataFrame  # channel, method, credit, share, low, high
    raw: pd.DataFrame  # channel, removal_effect, shapley_value, incremental_conversions
    paths: int
    conversions: int
    conversions_without_touch: int
    conversion_probability: float  # of the Markov chain


class _Prepared:
    """Everything that does not change when paths are reweighted (the bootstrap)."""

    def __init__(self, paths: Paths, half_life_seconds: float) -> None:
        self.paths = paths
        self.c = len(paths.channels)
        if self.c > MAX_SHAPLEY_CHANNELS:
            raise UserError(
                f"attribution: {self.c} channels; exact Shapley values take 2^channels coalitions, at most "
                f"{MAX_SHAPLEY_CHANNELS} channels (credit fewer, e.g. by channel instead of campaign)"
            )
        self.keep, self.weights = rule_weights(paths, half_life_seconds)
        self.rule_channel = paths.touch_channel[self.keep]
        self.rule_path = paths.touch_path[self.keep]
        self.chain = chain_transitions(paths)
        masks = channel_sets(paths)
        self.set_ids, self.set_of_path = np.unique(masks, return_inverse=True)
        self.touched = masks != 0

    def credit(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Credit (methods x channels) with path weights ``w``, raw removal effects and Shapley
        values, and the chain's conversion probability."""
        c, paths = self.c, self.paths
        out = np.zeros((len(METHODS), c))
        touch_w = w[self.rule_path]
        for m in range(len(RULES)):
            out[m] = np.bincount(self.rule_channel, weights=self.weights[:, m] * touch_w, minlength=c)
        touched_conversions = float((w * (paths.converted & self.touched)).sum())
        states = self.chain.states
        counts = np.bincount(self.chain.codes, weights=w[self.chain.path_of], minlength=states * states)
        probability, effects = removal_effects(counts, c)
        total = effects.sum()
        out[len(RULES)] = effects / total * touched_conversions if total > 0 else 0.0
        size = 1 << c
        conv = np.zeros(size)
        tot = np.zeros(size)
        per_set_conv = np.bincount(self.set_of_path, weights=w * paths.converted, minlength=len(self.set_ids))
        per_set_tot = np.bincount(self.set_of_path, weights=w, minlength=len(self.set_ids))
        conv[self.set_ids] = per_set_conv
        tot[self.set_ids] = per_set_tot
        phi = shapley_values(conv, tot, c) if c else np.zeros(0)
        phi_total = phi.sum()
        out[len(RULES) + 1] = phi / phi_total * touched_conversions if phi_total != 0 else 0.0
        return out, effects, phi * float(w.sum()), probability


def attribute(
    paths: Paths,
    half_life_seconds: float = 7 * 86400,
    bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> Attribution:
    """Credit per channel under every method, with bootstrap intervals (``bootstrap`` = 0: none)."""
    prepared = _Prepared(paths, half_life_seconds)
    n, c = paths.n_paths, prepared.c
    point, effects, phi, probability = prepared.credit(np.ones(n))
    low = np.full_like(point, np.nan)
    high = np.full_like(point, np.nan)
    if bootstrap and n:
        rng = np.random.default_rng(seed)
        draws = np.empty((bootstrap, *point.shape))
        for b in range(bootstrap):
            w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
            draws[b] = prepared.credit(w)[0]
        alpha = (1 - level) / 2
        low, high = np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0)
    rows = []
    for m, method in enumerate(METHODS):
        total = point[m].sum()
        for ch in range(c):
            rows.append(
                {
                    "channel": paths.channels[ch],
                    "method": method,
                    "credit": point[m, ch],
                    "share": point[m, ch] / total if total else np.nan,
                    "low": low[m, ch],
                    "high": high[m, ch],
                }
            )
    raw = pd.DataFrame(
        {
            "channel": paths.channels,
            "removal_effect": effects,
            "shapley_value": phi / n if n else phi,
            "incremental_conversions": phi,
        }
    )
    conversions = int(paths.converted.sum())
    return Attribution(
        credit=pd.DataFrame(rows, columns=["channel", "method", "credit", "share", "low", "high"]),
        raw=raw,
        paths=n,
        conversions=conversions,
        conversions_without_touch=int((paths.converted & ~prepared.touched).sum()),
        conversion_probability=probability,
    )
