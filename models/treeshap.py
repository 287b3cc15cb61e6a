"""Exact TreeSHAP for LightGBM boosters at O(trees x nodes x depth) a row, compiled with numba.

Equal to ``booster.predict(X, pred_contrib=True)`` (path-dependent TreeSHAP) up to rounding. A leaf
with value ``v`` whose root path tests the distinct features ``D`` gives feature ``k`` of its path

    v (o_k - z_k) * integral_0^1 prod_{j in D, j != k} (z_j + (o_j - z_j) t) dt

where ``z_j`` is the product over j's splits on the path of child count / parent count and
``o_j`` whether the row satisfies all of them (the Shapley weights ``s! (d-s-1)! / d!`` are the
Beta integrals of ``t^s (1-t)^(d-s-1)``). The integrand is a polynomial of degree < depth, so
Gauss-Legendre with ``ceil(depth / 2)`` points ``t_q`` integrates it exactly, and as in Linear
TreeSHAP the sum over leaves factors along the tree. Per row and tree: a downward pass decides
each split once and carries each slot's product of path factors ``F_o(t_q) = z + (o - z) t_q``
(precomputed per edge, divided by the factor of the path's previous split on the same feature,
times the leaf value on edges into leaves); an upward pass sums those products over each subtree
and adds ``sum_q w_q (o - z) / F_o(t_q) * subtree sum`` of each edge to its feature. Where a
feature is split again further down, the leaves below the deeper split belong to the deeper edge
and their sums are taken back out of the shallower one. That is a few length-Q operations per node
instead of classic TreeSHAP's O(depth^2) per leaf.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np

from propensity.models.tree_flatten import FlatTrees, flatten_trees

# LightGBM's kZeroThreshold (a float literal widened to double): dense rows drop values this close
# to zero before predicting, and missing_type Zero treats them as missing.
ZERO_THRESHOLD = float(np.float32(1e-35))
BLOCK_ROWS = 4096  # rows a thread converts to float64 and explains at a time
# Unsigned constants: kernel indices stay uint64 (mixing in a signed int would make them floats).
U0, U1, U2, U3, U4, U5, U31 = (np.uint64(i) for i in (0, 1, 2, 3, 4, 5, 31))


@numba.njit(cache=True, nogil=True)
def _explain_row(x, phi, m, pattern, offset, value):  # pragma: no cover - compiled
    """Add every tree's SHAP values for row ``x`` to ``phi`` (n_features). Per-slot scratch:
    ``pattern``; ``offset`` of the edge's share row; ``value`` (slot x Q: at the quadrature
    points, the path product on the way down, the subtree sum on the way up).

    Q is the length of a tuple, so numba compiles the point loops and flat-index arithmetic with
    constants; indices are unsigned so numba adds no negative-index wraparound."""
    Q = np.uint64(len(m.points))
    for tree in range(len(m.node_start)):
        internal = m.node_count[tree]
        if internal == U0:  # a stump only adds to the bias
            continue
        n0 = m.node_start[tree]
        s0 = m.slot_start[tree]
        pattern[0] = ~U0  # bit b: the row satisfies every split so far on the path's b-th feature
        for q in range(Q):
            value[q] = 1.0
        for node in range(internal):
            g = n0 + node
            # LightGBM's Tree::Decision on a dense float64 row (written out: a call costs more).
            x_g = x[m.feature[g]]
            if np.isnan(x_g):
                left_way = m.nan_left[g]
            elif -ZERO_THRESHOLD <= x_g <= ZERO_THRESHOLD:
                left_way = m.zero_left[g]
            elif m.categorical[g]:  # negatives (and values beyond int32) go right
                left_way = False
                if -1.0 < x_g < 2147483648.0:
                    category = np.uint64(x_g)
                    word = category >> U5
                    if word < m.cat_words[g]:
                        left_way = ((m.bits[m.cat_start[g] + word] >> (category & U31)) & U1) == U1
            else:
                left_way = x_g <= m.threshold[g]
            here = pattern[node]
            bit = U1 << m.bitpos[g]
            before = U1 if here & bit else U0
            a, b = m.left[g], m.right[g]
            hot_a = before if left_way else U0
            hot_b = before - hot_a
            pattern[a] = here if left_way else here & ~bit
            pattern[b] = here & ~bit if left_way else here
            ea, eb = s0 + a, s0 + b
            offset[a] = (ea * U2 + hot_a) * Q
            offset[b] = (eb * U2 + hot_b) * Q
            ma = (ea * U3 + before + hot_a) * Q
            mb = (eb * U3 + before + hot_b) * Q
            here_value, va, vb = node * Q, a * Q, b * Q
            for q in range(Q):
                value[va + q] = value[here_value + q] * m.multiplier[ma + q]
                value[vb + q] = value[here_value + q] * m.multiplier[mb + q]
        # Children before parents: a subtree sum is final when its parent is reached. A leaf's
        # value already holds leaf value x path product (its edge multiplier carries the value).
        for step in range(internal):
            node = internal - U1 - step
            g = n0 + node
            a, b = m.left[g], m.right[g]
            sa, sb = offset[a], offset[b]
            here_value, va, vb = node * Q, a * Q, b * Q
            contribution = 0.0
            for q in range(Q):
                value_a, value_b = value[va + q], value[vb + q]
                contribution += m.share[sa + q] * value_a + m.share[sb + q] * value_b
                value[here_value + q] = value_a + value_b
            phi[m.feature[g]] += contribution
        # Leaves under a deeper split on the same feature belong to that split's edges: take
        # their subtree sums back out of the shallower edge's share (only where a path splits on
        # a feature again; a list per tree, so no per-node branch).
        for j in range(m.handover_start[tree], m.handover_start[tree + U1]):
            feature, child, h = m.handover[j * U3], m.handover[j * U3 + U1], m.handover[j * U3 + U2]
            share, deeper = offset[child], h * Q
            correction = 0.0
            for q in range(Q):
                correction += m.share[share + q] * value[deeper + q]
            phi[feature] -= correction


@numba.njit(cache=True, nogil=True)
def _scratch(n_features, slots, points):  # pragma: no cover - compiled
    return (
        np.zeros(n_features),
        np.empty(slots, dtype=np.uint64),
        np.empty(slots, dtype=np.uint64),
        np.empty(slots * points),
    )


@numba.njit(cache=True, nogil=True)
def _contributions_rows(X, out, m, slots):  # pragma: no cover - compiled
    n, n_features = X.shape
    phi, pattern, hot, value = _scratch(n_features, slots, len(m.points))
    for r in range(n):
        phi[:] = 0.0
        _explain_row(X[r], phi, m, pattern, hot, value)
        out[r, :n_features] = phi
        out[r, n_features] = m.expected_value


@numba.njit(cache=True, nogil=True)
def _top_k_rows(X, k, out_index, out_impact, m, slots):  # pragma: no cover - compiled
    n, n_features = X.shape
    phi, pattern, hot, value = _scratch(n_features, slots, len(m.points))
    strength = np.empty(k)
    for r in range(n):
        phi[:] = 0.0
        _explain_row(X[r], phi, m, pattern, hot, value)
        # Insertion into a k-long list kept sorted by |impact|; ties keep the lower feature first,
        # as a stable argsort would. O(n_features) a row: most values do not qualify.
        kept = 0
        for j in range(n_features):
            impact = phi[j]
            a = abs(impact)
            if kept == k and not a > strength[k - 1]:
                continue
            pos = kept if kept < k else k - 1
            while pos > 0 and strength[pos - 1] < a:
                strength[pos] = strength[pos - 1]
                out_index[r, pos] = out_index[r, pos - 1]
                out_impact[r, pos] = out_impact[r, pos - 1]
                pos -= 1
            strength[pos] = a
            out_index[r, pos] = j
            out_impact[r, pos] = impact
            kept = min(kept + 1, k)


@dataclass(frozen=True, eq=False)
class TreeShapExplainer:
    """A LightGBM booster (one output per iteration) flattened for exact TreeSHAP; build it with
    :meth:`from_booster`, then :meth:`contributions` or :meth:`top_k` on float64 rows."""

    n_features: int
    feature_names: list[str]
    trees: FlatTrees
    slots: int  # most slots (internal nodes + leaves) in one tree

    @property
    def expected_value(self) -> float:
        """The bias column: the count-weighted mean raw score of the trees, as LightGBM reports it."""
        return self.trees.expected_value

    @classmethod
    def from_booster(cls, booster: lgb.Booster, num_iteration: int | None = None) -> TreeShapExplainer:
        """Parse ``booster.dump_model(num_iteration)``: ``num_iteration`` None means what
        ``booster.predict`` uses, the best iteration if the booster has one, else all trees."""
        return cls.from_dump(booster.dump_model(num_iteration=num_iteration))

    @classmethod
    def from_dump(cls, dump: dict) -> TreeShapExplainer:
        """Flatten a ``booster.dump_model()`` dict into arrays with the per-edge factors. Raises
        ValueError for models it does not cover (several outputs per iteration, linear trees, an
        empty split side, more than 62 distinct features on one path)."""
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("TreeShapExplainer covers one output per iteration (binary, regression)")
        if any(tree.get("is_linear") for tree in dump["tree_info"]):
            raise ValueError("TreeShapExplainer does not cover linear trees")
        trees = flatten_trees([tree["tree_structure"] for tree in dump["tree_info"]])
        slots = int(2 * trees.node_count.max(initial=0) + 1)
        return cls(int(dump["max_feature_idx"]) + 1, list(dump["feature_names"]), trees, slots)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP values (n, n_features + 1) of the raw score for a 2-D array of rows (float64 as
        LightGBM sees it: categoricals as codes, missing as NaN); the last column is the bias."""
        X = self._checked(X)
        out = np.empty((X.shape[0], self.n_features + 1))
        self._each_block(
            X, lambda rows, start, stop: _contributions_rows(rows, out[start:stop], self.trees, self.slots)
        )
        return out

    def top_k(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` features with the largest |SHAP value| per row, strongest first (ties: lower
        index first): feature indices int32 (n, k) and their signed SHAP values float64 (n, k).
        ``k`` is capped at n_features; the (n, n_features) matrix is never built."""
        X = self._checked(X)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(int(k), self.n_features)
        index = np.empty((X.shape[0], k), dtype=np.int32)
        impact = np.empty((X.shape[0], k))

        def explain(rows: np.ndarray, start: int, stop: int) -> None:
            _top_k_rows(rows, k, index[start:stop], impact[start:stop], self.trees, self.slots)

        self._each_block(X, explain)
        return index, impact

    @staticmethod
    def _each_block(X: np.ndarray, explain) -> None:
        """Call ``explain(rows, start, stop)`` on blocks of BLOCK_ROWS float64 rows, on as many
        threads as numba is set to use (the kernels release the GIL); only the blocks in flight are
        converted, so memory does not grow with n."""
        starts = range(0, X.shape[0], BLOCK_ROWS)

        def run(start: int) -> None:
            stop = min(start + BLOCK_ROWS, X.shape[0])
            explain(np.ascontiguousarray(X[start:stop], dtype=np.float64), start, stop)

        threads = min(numba.get_num_threads(), len(starts))
        if threads <= 1:
            for start in starts:
                run(start)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, starts))  # list(): re-raises a block's exception here

    def _checked(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a 2-D array with {self.n_features} columns, got shape {X.shape}")
        return X
