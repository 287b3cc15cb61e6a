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
instead of classic TreeSHAP's O(depth^2) per leaf. The kernels take rows in groups and each
tree once per group, the rows in SIMD lanes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np

from propensity.models import treeshap_tables
from propensity.models.tree_flatten import ZERO_THRESHOLD, FlatTrees, flatten_trees
from propensity.models.treeshap_tables import NO_TABLES, LeafTables, explain_group_tables, leaf_tables

BLOCK_ROWS = 4096  # rows a thread converts to float64 and explains at a time
# Rows a kernel explains together per tree pass (measured on a 300-tree depth-6 model: 1.2-1.8x
# the row-at-a-time speed from 16 to 64 rows, slower again at 128), and the most path-product
# values a group may hold (256 KiB).
GROUP_ROWS = 64
GROUP_VALUES = 32768
# Unsigned constants: kernel indices stay uint64 (mixing in a signed int would make them floats).
U0, U1, U2, U3, U5, U31 = (np.uint64(i) for i in (0, 1, 2, 3, 5, 31))


@numba.njit(inline="always")
def _route(pattern, hot, variant, node, a, b, r, position, left_way):  # pragma: no cover - compiled
    """Row ``r`` at ``node`` goes ``left_way``: its path pattern and hot flags on both child edges,
    and which multiplier row each child edge takes: (o', o) = (0, 0), (1, 0), (1, 1) as o' + o.
    Inlined into the kernel's row loops (so they still vectorise)."""
    here = pattern[node, r]
    before = (here >> position) & U1
    bit = U1 << position
    hot_a = before if left_way else U0
    hot_b = before - hot_a
    pattern[a, r] = here if left_way else here & ~bit
    pattern[b, r] = here & ~bit if left_way else here
    hot[a, r] = hot_a
    hot[b, r] = hot_b
    variant[0, r] = before + hot_a
    variant[1, r] = before + hot_b


@numba.njit(cache=True, nogil=True)
def _explain_group(XT, n, phi, raw, m, s):  # pragma: no cover - compiled
    """Add every explained tree's SHAP values for the first ``n`` rows of the group ``XT``
    (n_features x R: a row per column) to ``phi`` (n_features x R), and the value of the leaf each
    row reaches to its tree's part of ``raw`` (parts x R), tree after tree as LightGBM's predict
    sums them, so a part that is one booster's trees gets its raw score to the last bit. A tree
    not explained (``m.explained``) is only routed: its leaf goes to the raw score, no SHAP work.
    Scratch ``s`` (see :func:`_scratch`) holds per slot and row: ``pattern``, ``hot`` (whether the
    row satisfies every split on the edge's feature, which picks the edge's share row), ``value``
    (flat, (slot x Q + q) x R + r: at the quadrature points, the path product on the way down, the
    subtree sum on the way up).

    The trees are the outer loop and the group's rows the inner one: a tree's arrays are read once
    a group instead of once a row, and each node's arithmetic runs over the rows in SIMD lanes
    (the choices between an edge's factors are selects, not branches). Which loop shapes
    vectorise was measured: a numeric split decides and routes in one loop, the upward sums take
    each row's Q points in one go, while the downward products run point by point. Q is the length of a
    tuple, so the point loops compile with constants; indices are unsigned so numba adds no
    negative-index wraparound."""
    pattern, hot, variant, left, acc, value = s
    Q = np.uint64(len(m.points))
    R = np.uint64(XT.shape[1])
    n = np.uint64(n)
    for tree in range(len(m.node_start)):
        internal = m.node_count[tree]
        n0 = m.node_start[tree]
        s0 = m.slot_start[tree]
        raw_part = raw[m.part[tree]]
        explained = m.explained[tree]
        if internal == U0:  # a stump adds its value to the score and nothing to a feature
            stump = m.leaf_value[s0]
            for r in range(n):
                raw_part[r] += stump
            continue
        for r in range(n):
            pattern[0, r] = ~U0  # bit b: the row satisfies every split so far on the path's b-th feature
        if explained:
            for q in range(Q):
                for r in range(n):
                    value[q * R + r] = 1.0
        for node in range(internal):
            g = n0 + node
            xs = XT[m.feature[g]]
            # LightGBM's Tree::Decision on dense float64 rows, written out (a call costs more).
            if m.categorical[g]:  # negatives (and values beyond int32) go right
                for r in range(n):
                    x_g = xs[r]
                    if np.isnan(x_g):
                        left_way = m.nan_left[g]
                    elif -ZERO_THRESHOLD <= x_g <= ZERO_THRESHOLD:
                        left_way = m.zero_left[g]
                    else:
                        left_way = False
                        if -1.0 < x_g < 2147483648.0:
                            category = np.uint64(x_g)
                            word = category >> U5
                            if word < m.cat_words[g]:
                                left_way = ((m.bits[m.cat_start[g] + word] >> (category & U31)) & U1) == U1
                    left[r] = left_way
            position = m.bitpos[g]
            a, b = m.left[g], m.right[g]
            if m.categorical[g]:
                for r in range(n):
                    _route(pattern, hot, variant, node, a, b, r, position, left[r])
            else:  # NaN fails both comparisons, so the last select alone decides it
                threshold, nan_left, zero_left = m.threshold[g], m.nan_left[g], m.zero_left[g]
                for r in range(n):
                    x_g = xs[r]
                    left_way = x_g <= threshold
                    left_way = zero_left if (x_g >= -ZERO_THRESHOLD) & (x_g <= ZERO_THRESHOLD) else left_way
                    left_way = nan_left if np.isnan(x_g) else left_way
                    _route(pattern, hot, variant, node, a, b, r, position, left_way)
            if not explained:
                continue
            ea, eb = (s0 + a) * U3, (s0 + b) * U3
            for q in range(Q):
                a0, a1, a2 = (
                    m.multiplier[ea * Q + q],
                    m.multiplier[(ea + U1) * Q + q],
                    m.multiplier[(ea + U2) * Q + q],
                )
                b0, b1, b2 = (
                    m.multiplier[eb * Q + q],
                    m.multiplier[(eb + U1) * Q + q],
                    m.multiplier[(eb + U2) * Q + q],
                )
                here_row, a_row, b_row = (node * Q + q) * R, (a * Q + q) * R, (b * Q + q) * R
                for r in range(n):
                    v = value[here_row + r]
                    va, vb = variant[0, r], variant[1, r]
                    value[a_row + r] = v * (a0 if va == U0 else (a1 if va == U1 else a2))
                    value[b_row + r] = v * (b0 if vb == U0 else (b1 if vb == U1 else b2))
        # The row reaches the one leaf whose path it follows at every split: no bit cleared. Adding
        # 0.0 for the other leaves leaves the sum as it is.
        for leaf in range(internal, internal + internal + U1):
            leaf_value = m.leaf_value[s0 + leaf]
            for r in range(n):
                raw_part[r] += leaf_value if pattern[leaf, r] == ~U0 else 0.0
        if not explained:
            continue
        # Children before parents: a subtree sum is final when its parent is reached. A leaf's
        # value already holds leaf value x path product (its edge multiplier carries the value).
        for step in range(internal):
            node = internal - U1 - step
            g = n0 + node
            a, b = m.left[g], m.right[g]
            ea, eb = (s0 + a) * U2, (s0 + b) * U2
            feature = m.feature[g]
            for r in range(n):
                hot_a, hot_b = hot[a, r], hot[b, r]
                contribution = 0.0
                for q in range(Q):
                    sa0, sa1 = m.share[ea * Q + q], m.share[(ea + U1) * Q + q]
                    sb0, sb1 = m.share[eb * Q + q], m.share[(eb + U1) * Q + q]
                    value_a, value_b = value[(a * Q + q) * R + r], value[(b * Q + q) * R + r]
                    contribution += (sa1 if hot_a else sa0) * value_a + (sb1 if hot_b else sb0) * value_b
                    value[(node * Q + q) * R + r] = value_a + value_b
                acc[r] = contribution
            for r in range(n):
                phi[feature, r] += acc[r]
        # Leaves under a deeper split on the same feature belong to that split's edges: take
        # their subtree sums back out of the shallower edge's share (only where a path splits on
        # a feature again; a list per tree, so no per-node branch).
        for j in range(m.handover_start[tree], m.handover_start[tree + U1]):
            feature, child, h = m.handover[j * U3], m.handover[j * U3 + U1], m.handover[j * U3 + U2]
            edge = (s0 + child) * U2
            for r in range(n):
                acc[r] = 0.0
            for q in range(Q):
                c0, c1 = m.share[edge * Q + q], m.share[(edge + U1) * Q + q]
                deeper = (h * Q + q) * R
                for r in range(n):
                    acc[r] += (c1 if hot[child, r] else c0) * value[deeper + r]
            for r in range(n):
                phi[feature, r] -= acc[r]


@numba.njit(cache=True, nogil=True)
def _scratch(slots, points, rows):  # pragma: no cover - compiled
    return (
        np.empty((slots, rows), dtype=np.uint64),  # pattern
        np.empty((slots, rows), dtype=np.uint64),  # hot
        np.empty((2, rows), dtype=np.uint64),  # variant of the two child edges
        np.empty(rows, dtype=np.bool_),  # left
        np.empty(rows),  # acc
        np.empty(slots * points * rows),  # value
    )


@numba.njit(cache=True, nogil=True)
def _load_group(X, start, XT, phi, raw):  # pragma: no cover - compiled
    """Rows ``start`` .. of ``X`` into the columns of ``XT``; zero ``phi`` and ``raw``. Returns the
    row count."""
    n = min(XT.shape[1], X.shape[0] - start)
    if X.strides[0] <= X.strides[1]:  # column-major rows (scoring's): read each column's run
        for j in range(X.shape[1]):
            for r in range(n):
                XT[j, r] = X[start + r, j]
    else:
        for r in range(n):
            for j in range(X.shape[1]):
                XT[j, r] = X[start + r, j]
    phi[:] = 0.0
    raw[:] = 0.0
    return n


@numba.njit(cache=True, nogil=True)
def _explain(XT, n, phi, raw, m, tb, s):  # pragma: no cover - compiled
    """One group by the leaf tables when there are some (:mod:`.treeshap_tables`), else by the
    Linear-TreeSHAP pass."""
    if len(tb.depth):
        explain_group_tables(XT, n, phi, raw, m, tb, s[0])
    else:
        _explain_group(XT, n, phi, raw, m, s)


@numba.njit(cache=True, nogil=True)
def _contributions_rows(X, out, m, tb, slots, rows):  # pragma: no cover - compiled
    n_features = X.shape[1]
    XT, phi, raw = np.empty((n_features, rows)), np.empty((n_features, rows)), np.empty((m.parts, rows))
    s = _scratch(slots, 0 if len(tb.depth) else len(m.points), rows)
    for start in range(0, X.shape[0], rows):
        n = _load_group(X, start, XT, phi, raw)
        _explain(XT, n, phi, raw, m, tb, s)
        for r in range(n):
            out[start + r, :n_features] = phi[:, r]
            out[start + r, n_features] = m.expected_value


@numba.njit(cache=True, nogil=True)
def _top_k_rows(X, k, out_raw, out_index, out_impact, m, tb, slots, rows):  # pragma: no cover - compiled
    n_features = X.shape[1]
    XT, phi, raw = np.empty((n_features, rows)), np.empty((n_features, rows)), np.empty((m.parts, rows))
    s = _scratch(slots, 0 if len(tb.depth) else len(m.points), rows)
    strength = np.empty(k)
    for start in range(0, X.shape[0], rows):
        n = _load_group(X, start, XT, phi, raw)
        _explain(XT, n, phi, raw, m, tb, s)
        for r in range(n):
            i = start + r
            for p in range(m.parts):
                out_raw[p, i] = raw[p, r]
            # Insertion into a k-long list kept sorted by |impact|; ties keep the lower feature
            # first, as a stable argsort would. O(n_features) a row: most values do not qualify.
            kept = 0
            for j in range(n_features):
                impact = phi[j, r]
                a = abs(impact)
                if kept == k and not a > strength[k - 1]:
                    continue
                pos = kept if kept < k else k - 1
                while pos > 0 and strength[pos - 1] < a:
                    strength[pos] = strength[pos - 1]
                    out_index[i, pos] = out_index[i, pos - 1]
                    out_impact[i, pos] = out_impact[i, pos - 1]
                    pos -= 1
                strength[pos] = a
                out_index[i, pos] = j
                out_impact[i, pos] = impact
                kept = min(kept + 1, k)


@dataclass(frozen=True, eq=False)
class TreeShapExplainer:
    """A LightGBM booster (one output per iteration) flattened for exact TreeSHAP; build it with
    :meth:`from_booster`, then :meth:`contributions` or :meth:`top_k` on float64 rows."""

    n_features: int
    feature_names: list[str]
    trees: FlatTrees
    slots: int  # most slots (internal nodes + leaves) in one tree
    tables: LeafTables = NO_TABLES  # the leaves' SHAP tables, when the trees are shallow enough

    @property
    def group_rows(self) -> int:
        """Rows explained together per tree pass: with leaf tables up to TABLE_GROUP_ROWS; else up to
        GROUP_ROWS, fewer for trees so big that the group's path products (slots x points x rows
        doubles) would leave the core's cache."""
        if len(self.tables.depth):  # the group's patterns (slots x rows words) within 512 KiB
            fit = treeshap_tables.TABLE_GROUP_BYTES // (self.slots * 8) // 8 * 8
            return int(min(treeshap_tables.TABLE_GROUP_ROWS, max(8, fit)))
        per_row = self.slots * len(self.trees.points)
        return int(min(GROUP_ROWS, max(8, GROUP_VALUES // per_row // 8 * 8)))

    @property
    def expected_value(self) -> float:
        """The bias column: the count-weighted mean raw score of the trees, as LightGBM reports it."""
        return self.trees.expected_value

    @classmethod
    def from_booster(
        cls, booster: lgb.Booster, num_iteration: int | None = None, tables: bool = True
    ) -> TreeShapExplainer:
        """Parse ``booster.dump_model(num_iteration)``: ``num_iteration`` None means what
        ``booster.predict`` uses, the best iteration if the booster has one, else all trees;
        ``tables`` False: the Linear-TreeSHAP pass even where leaf tables would fit."""
        return cls.from_dump(booster.dump_model(num_iteration=num_iteration), tables=tables)

    @classmethod
    def from_dump(
        cls,
        dump: dict,
        parts: list[int] | None = None,
        explained: list[bool] | None = None,
        tables: bool = True,
    ) -> TreeShapExplainer:
        """Flatten a ``booster.dump_model()`` dict into arrays with the per-edge factors. Raises
        ValueError for models it does not cover (several outputs per iteration, linear trees, an
        empty split side, more than 62 distinct features on one path).

        An ensemble of several boosters' trees (``models.uplift``) says per tree which raw score
        it adds to (``parts``: 0, 1, ...; default all 0) and whether its leaves are explained
        (``explained``; default all): the SHAP values and the bias are those of the explained
        trees' sum, the other trees only predict."""
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("TreeShapExplainer covers one output per iteration (binary, regression)")
        if any(tree.get("is_linear") for tree in dump["tree_info"]):
            raise ValueError("TreeShapExplainer does not cover linear trees")
        roots = [tree["tree_structure"] for tree in dump["tree_info"]]
        trees = flatten_trees(roots, parts, explained)
        slots = int(2 * trees.node_count.max(initial=0) + 1)
        leaf = leaf_tables(roots, trees) if tables else NO_TABLES
        return cls(int(dump["max_feature_idx"]) + 1, list(dump["feature_names"]), trees, slots, leaf)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP values (n, n_features + 1) of the raw score for a 2-D array of rows (float64 as
        LightGBM sees it: categoricals as codes, missing as NaN); the last column is the bias."""
        X = self._checked(X)
        out = np.empty((X.shape[0], self.n_features + 1))
        self._each_block(
            X,
            lambda rows, start, stop: _contributions_rows(
                rows, out[start:stop], self.trees, self.tables, self.slots, self.group_rows
            ),
        )
        return out

    def top_k(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` features with the largest |SHAP value| per row, strongest first (ties: lower
        index first): feature indices int32 (n, k) and their signed SHAP values float64 (n, k).
        ``k`` is capped at n_features; the (n, n_features) matrix is never built."""
        _, index, impact = self.raw_score_and_top_k(X, k)
        return index, impact

    def raw_score_and_top_k(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`top_k` and, from the same pass over the trees, each row's raw score (n,), equal to
        ``booster.predict(X, raw_score=True)`` bit for bit (the same leaves added in the same
        order): batch scoring predicts and explains in one pass. (An ensemble of several parts:
        the sum of :meth:`part_scores_and_top_k`'s scores.)"""
        raw, index, impact = self.part_scores_and_top_k(X, k)
        return (raw[0] if len(raw) == 1 else raw.sum(axis=0)), index, impact

    def part_scores_and_top_k(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`top_k` and each part's raw score (parts, n) from the same pass: a part holding one
        booster's trees (leaves scaled by -1 or not at all) has that booster's raw score bit for
        bit, negated or not (see :meth:`from_dump`)."""
        X = self._checked(X)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(int(k), self.n_features)
        raw = np.empty((self.trees.parts, X.shape[0]))
        index = np.empty((X.shape[0], k), dtype=np.int32)
        impact = np.empty((X.shape[0], k))

        def explain(rows: np.ndarray, start: int, stop: int) -> None:
            _top_k_rows(
                rows,
                k,
                raw[:, start:stop],
                index[start:stop],
                impact[start:stop],
                self.trees,
                self.tables,
                self.slots,
                self.group_rows,
            )

        self._each_block(X, explain)
        return raw, index, impact

    @staticmethod
    def _each_block(X: np.ndarray, explain) -> None:
        """Call ``explain(rows, start, stop)`` on blocks of BLOCK_ROWS float64 rows, on as many
        threads as numba is set to use (the kernels release the GIL). Row- or column-major float64
        arrays are read in place; others are converted a block at a time, so memory does not grow
        with n."""
        starts = range(0, X.shape[0], BLOCK_ROWS)

        def run(start: int) -> None:
            stop = min(start + BLOCK_ROWS, X.shape[0])
            rows = X[start:stop]
            if rows.dtype != np.float64 or not (rows.flags.c_contiguous or X.flags.f_contiguous):
                rows = np.ascontiguousarray(rows, dtype=np.float64)
            explain(rows, start, stop)

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
