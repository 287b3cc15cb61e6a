"""Attribution: credit for an outcome across the touchpoints (channel or campaign) before it.

**Paths.** Each profile with an event in the period is one path: a converter's touchpoints in
the lookback window before its first outcome event, a non-converter's in the lookback window
before the end of the data. The outcome event itself is never a touchpoint.

**Rules.** ``first``, ``last``, ``linear`` (equal shares of every touch), ``time_decay``
(a touch ``d`` before the conversion weighs ``2^(-d / half_life)``), ``position`` (40 % first,
40 % last, 20 % shared by the middle; one touch takes all, two split evenly). Rules see
converters only.

**Markov removal effect, exact.** Consecutive repeats collapse (a first-order chain's
absorption probabilities do not depend on self-loops). States: start, one per channel,
conversion, null. With ``Q`` the transitions among transient states and ``r`` those into
conversion, the probability of converting from each state is ``x = (I - Q)^{-1} r``, one
linear solve; removing channel ``c`` makes every transition into ``c`` end in null, i.e. the
same solve with ``c``'s row and column dropped. ``removal_effect_c = 1 - P_without_c / P``.
No simulation: the same data always gives the same credit.

**Shapley values over channel sets, exact.** Paths are counted by the set of channels they
touch (a bit mask); the value of a coalition ``S`` is the conversion rate of the paths whose
channels all lie in ``S`` (``S``'s subsets summed by a zeta transform over ``2^C`` masks, so
every coalition has a value as long as some path qualifies). The Shapley value of channel
``i`` is the exact weighted sum of ``v(S + i) - v(S)`` over all ``2^(C-1)`` coalitions without
it; the values add up to ``v(all) - v(none)``, the conversion rate the touchpoints add, and
times the number of paths they are incremental conversions. Exact up to
:data:`MAX_SHAPLEY_CHANNELS` channels (``2^C`` masks in memory), beyond the four at which
common implementations stop.

Data-driven credit is reported as a share of the touched conversions, like the rules, with
the raw removal effects and Shapley values beside it. Bootstrap intervals resample profiles
(multinomial weights; seeded) and recompute every method.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.core.errors import UserError
from propensity.features.journeys.engine import Runner
from propensity.features.journeys.spec import Step
from propensity.features.sql import Dialect

RULES = ("first", "last", "linear", "time_decay", "position")
METHODS = (*RULES, "markov", "shapley")
MAX_SHAPLEY_CHANNELS = 24
MICROS = 1_000_000


def touches_sql(
    outcome: Step,
    events: str,
    end: dt.datetime,
    since: dt.datetime,
    lookback_seconds: int,
    dialect: Dialect,
    by: str = "channel",
    touch_types: list[str] | None = None,
    columns: set[str] | None = None,
) -> str:
    """One row per touchpoint of each path (``profile_id``, ``converted_at`` micros or NULL,
    ``t``, ``touch``), and one row with NULL ``t`` and ``touch`` for a path without any."""
    if columns is not None and by not in columns:
        raise UserError(f"attribution: the events have no column '{by}' to credit")
    q = dialect.ident
    lookback = lookback_seconds * MICROS
    end_us = dialect.micros(dialect.timestamp(end))
    since_us = dialect.micros(dialect.timestamp(since))
    hit = outcome.condition(columns, dialect.quote)
    touch = f"{q(by)} IS NOT NULL AND NOT {hit}"
    if touch_types:
        listed = ", ".join("'" + t.replace("'", "''") + "'" for t in touch_types)
        touch += f" AND {q('event_type')} IN ({listed})"
    return f"""
        WITH e AS (
            SELECT {q("profile_id")} AS pid, {dialect.micros(q("timestamp"))} AS t,
                   CAST({q(by)} AS {dialect.string_type}) AS v, {hit} AS o, {touch} AS tp
            FROM {events}
            WHERE {q("timestamp")} < {dialect.timestamp(end)} AND {q("profile_id")} IS NOT NULL
              AND {dialect.micros(q("timestamp"))} >= {since_us} - {lookback}
        ), conv AS (
            SELECT pid, min(t) AS ct FROM e WHERE o AND t >= {since_us} GROUP BY pid
        ), people AS (
            SELECT DISTINCT pid FROM e WHERE t >= {since_us}
        ), u AS (
            SELECT p.pid, c.ct FROM people p LEFT JOIN conv c ON p.pid = c.pid
        )
        SELECT u.pid AS profile_id, u.ct AS converted_at, e.t, e.v AS touch
        FROM u LEFT JOIN e
          ON e.pid = u.pid AND e.tp AND e.t < coalesce(u.ct, {end_us})
         AND e.t >= coalesce(u.ct, {end_us}) - {lookback}
        ORDER BY 1, 3, 4
    """


@dataclass
class Paths:
    """Touchpoint paths as arrays. Paths are sorted by profile; touches by path, time, channel."""

    profile_id: np.ndarray  # (paths,)
    converted: np.ndarray  # (paths,) bool
    converted_at: np.ndarray  # (paths,) micros, -1 for non-converters
    channels: list[str]  # code -> name, sorted
    touch_path: np.ndarray  # (touches,) int64 path index
    touch_channel: np.ndarray  # (touches,) int64 channel code
    touch_time: np.ndarray  # (touches,) micros

    @property
    def n_paths(self) -> int:
        return len(self.profile_id)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Dense codes of a column's values in sorted order (so the same values always get the
    same codes, whatever the engine's row order), and the sorted values."""
    import pyarrow.compute as pc

    values = pc.unique(column.drop_null() if column.null_count else column)
    values = values.take(pc.sort_indices(values))
    codes = pc.index_in(column, value_set=values).to_numpy(zero_copy_only=False)
    return codes, values.to_pylist()


def paths_from_arrow(table: pa.Table) -> Paths:
    """The rows of :func:`touches_sql` as :class:`Paths` (deterministic whatever the row order)."""
    import pyarrow.compute as pc

    table = table.combine_chunks()
    path, profiles = _codes(table.column("profile_id"))
    n = len(profiles)
    converted_at = np.full(n, -1, dtype=np.int64)
    at = table.column("converted_at").fill_null(-1).to_numpy()
    converted_at[path] = at  # the same for every row of a profile
    touched = pc.is_valid(table.column("touch")).to_numpy(zero_copy_only=False)
    touches = table.filter(pa.array(touched))
    channel, channels = _codes(touches.column("touch"))
    path = path[touched].astype(np.int64)
    channel = channel.astype(np.int64)
    time = touches.column("t").to_numpy().astype(np.int64)
    # The query returns the rows in this order already; sort only when an engine did not.
    same_path, same_time = path[1:] == path[:-1], time[1:] == time[:-1]
    ordered = (
        (path[1:] > path[:-1])
        | (same_path & (time[1:] > time[:-1]))
        | (same_path & same_time & (channel[1:] >= channel[:-1]))
    ).all()
    order = slice(None) if ordered else np.lexsort((channel, time, path))
    return Paths(
        profile_id=np.asarray(profiles, dtype=object),
        converted=converted_at >= 0,
        converted_at=converted_at,
        channels=[str(c) for c in channels],
        touch_path=path[order],
        touch_channel=channel[order],
        touch_time=time[order],
    )


def paths_from_lists(
    sequences: list[list[str]], converted: list[bool], times: list[list[float]] | None = None
) -> Paths:
    """Paths from Python lists (one list of channels per path; times in seconds before the
    conversion, default one hour apart): for notebooks and tests."""
    channels = sorted({c for s in sequences for c in s})
    code = {c: i for i, c in enumerate(channels)}
    tp, tc, tt = [], [], []
    for i, seq in enumerate(sequences):
        for j, c in enumerate(seq):
            tp.append(i)
            tc.append(code[c])
            before = times[i][j] if times is not None else 3600.0 * (len(seq) - j)
            tt.append(int(10**15 - before * MICROS))
    n = len(sequences)
    return Paths(
        profile_id=np.array([f"p{i:09d}" for i in range(n)], dtype=object),
        converted=np.asarray(converted, dtype=bool),
        converted_at=np.where(np.asarray(converted, dtype=bool), 10**15, -1).astype(np.int64),
        channels=channels,
        touch_path=np.asarray(tp, dtype=np.int64),
        touch_channel=np.asarray(tc, dtype=np.int64),
        touch_time=np.asarray(tt, dtype=np.int64),
    )


# --- rules ------------------------------------------------------------------------------------


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


# --- Markov ---------------------------------------------------------------------------------


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


# --- Shapley --------------------------------------------------------------------------------


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


# --- all methods ----------------------------------------------------------------------------


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


def run_touches(
    runner: Runner,
    outcome: Step,
    events: str,
    end: dt.datetime,
    since: dt.datetime,
    lookback_seconds: int,
    by: str = "channel",
    touch_types: list[str] | None = None,
) -> Paths:
    """The touchpoint paths on one engine."""
    columns = runner.columns(events)
    sql = touches_sql(outcome, events, end, since, lookback_seconds, runner.dialect, by, touch_types, columns)
    return paths_from_arrow(runner.query(sql))
