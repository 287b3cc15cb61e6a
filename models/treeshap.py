"""Exact TreeSHAP for LightGBM boosters at O(trees x leaves x depth) a row, compiled with numba.

Equal to ``booster.predict(X, pred_contrib=True)`` (path-dependent TreeSHAP) up to rounding, with
per-leaf Shapley weights precomputed once per model, as in FastTreeSHAP v2. A leaf with value ``v``
whose root path tests ``d`` distinct features gives feature ``k`` of its path

    v (o_k - z_k) * prod_{j in D \\ Q, j != k} z_j * H(Q),   H(Q) = sum_s w_d(s) e_{|Q|-s}(z_Q)

where ``z_k`` is the product over k's splits on the path of child count / parent count, ``o_k``
whether the row satisfies all of k's splits there, ``Q`` the path's other features the row
satisfies, ``e_t`` elementary symmetric polynomials and ``w_d(s) = s! (d-s-1)! / d!``. With
``A(P) = H(P) prod_{j not in P} z_j`` over the satisfied set ``P`` this is ``-v A(P)`` for an
unsatisfied ``k`` and ``v (1 - z_k) / z_k A(P \\ k)`` for a satisfied one, so each leaf keeps a
table of ``A`` over its ``2^d`` patterns and a row costs one walk per tree (each split decided once,
the satisfied-pattern of every leaf carried down) plus ``d`` table reads a leaf. A leaf too deep for
a table (or with an empty child, z = 0) is computed per row from the same formula in O(d^2).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import NamedTuple

import lightgbm as lgb
import numba
import numpy as np

# LightGBM's kZeroThreshold (a float literal widened to double): dense rows drop values this close
# to zero before predicting, and missing_type Zero treats them as missing.
ZERO_THRESHOLD = float(np.float32(1e-35))
MAX_PATH_FEATURES = 62  # a leaf's satisfied-pattern is a 64-bit mask
# Leaves with at most TABLE_DEPTH distinct path features get a table of 2^d floats while all tables
# fit in TABLE_BUDGET floats (deepest dropped first); the others are computed per row.
TABLE_DEPTH = 12
TABLE_BUDGET = 1 << 24
CHUNK_ROWS = 1 << 16  # rows converted to float64 at a time: peak memory does not grow with n
BLOCK_ROWS = 64  # rows a thread explains with one set of scratch buffers


class FlatTrees(NamedTuple):
    """The model as the kernels read it. Per tree: where its nodes and leaves start. Internal nodes
    in preorder; children as a tree-local slot (internal index, or internal count + leaf index)."""

    node_start: np.ndarray  # int64 (trees,)
    node_count: np.ndarray  # int64 (trees,): internal nodes; the tree has node_count + 1 leaves
    leaf_start: np.ndarray  # int64 (trees,)
    feature: np.ndarray  # int64 (nodes,)
    threshold: np.ndarray  # float64 (nodes,): numeric splits go left when x <= threshold
    categorical: np.ndarray  # bool (nodes,): split by the category bitset instead
    nan_left: np.ndarray  # bool (nodes,): where NaN goes (LightGBM's missing_type rules)
    zero_left: np.ndarray  # bool (nodes,): where 0 (|x| <= ZERO_THRESHOLD) goes
    bitpos: np.ndarray  # int64 (nodes,): the split feature's bit among the path's distinct features
    left: np.ndarray  # int64 (nodes,)
    right: np.ndarray  # int64 (nodes,)
    cat_start: np.ndarray  # int64 (nodes,): first word of the bitset in ``bits``
    cat_words: np.ndarray  # int64 (nodes,)
    bits: np.ndarray  # uint32: categories going left, LightGBM's bitset layout
    table_start: np.ndarray  # int64 (leaves,): offset of A in ``table``, -1 when computed per row
    low_mask: np.ndarray  # int64 (leaves,): 2^d - 1
    neg_value: np.ndarray  # float64 (leaves,): -v
    leaf_feature: np.ndarray  # int64 (leaves, width): path features, padding points at the scratch slot
    ratio: np.ndarray  # float64 (leaves, width): v (1 - z_k) / z_k, 0 in padding
    table: np.ndarray  # float64: A over each tabled leaf's patterns
    leaf_value: np.ndarray  # float64 (leaves,)
    path_start: np.ndarray  # int64 (leaves,): the leaf's distinct features in path_feature/path_zero
    path_depth: np.ndarray  # int64 (leaves,): d
    path_feature: np.ndarray  # int64
    path_zero: np.ndarray  # float64: z per distinct path feature
    weights: np.ndarray  # float64 (max d + 1, max d + 1): w_d(s)
    expected_value: float  # the bias: sum over trees of the count-weighted mean leaf value


@numba.njit(cache=True, nogil=True)
def _leaf_per_row(phi, pattern, value, start, d, m, poly, deflated):  # pragma: no cover - compiled
    """Add one leaf's shares to ``phi`` for the row's pattern in O(d^2), without a table."""
    satisfied = 0
    poly[0] = 1.0
    rest = 1.0  # product of z over the features the row does not satisfy
    for k in range(d):
        z = m.path_zero[start + k]
        if (pattern >> k) & 1:
            satisfied += 1
            poly[satisfied] = 0.0
            for t in range(satisfied, 0, -1):
                poly[t] += z * poly[t - 1]
        else:
            rest *= z
    unsatisfied = 0.0
    for s in range(satisfied + 1):
        unsatisfied += m.weights[d, s] * poly[satisfied - s]
    unsatisfied *= -value * rest
    for k in range(d):
        z = m.path_zero[start + k]
        feature = m.path_feature[start + k]
        if (pattern >> k) & 1:
            # e_t without k: divide the polynomial by (1 + z y); forward division is stable for z <= 1
            deflated[0] = 1.0
            for t in range(1, satisfied):
                deflated[t] = poly[t] - z * deflated[t - 1]
            h = 0.0
            for s in range(satisfied):
                h += m.weights[d, s] * deflated[satisfied - 1 - s]
            phi[feature] += value * (1.0 - z) * rest * h
        else:
            phi[feature] += unsatisfied


@numba.njit(cache=True, nogil=True)
def _explain_row(x, phi, m, pattern, poly, deflated):  # pragma: no cover - compiled
    """Add every tree's SHAP values for row ``x`` to ``phi`` (n_features + 2: bias, then scratch)."""
    phi[len(phi) - 2] += m.expected_value
    width = m.leaf_feature.shape[1]
    for tree in range(len(m.node_start)):
        n0 = m.node_start[tree]
        internal = m.node_count[tree]
        if internal == 0:
            continue
        pattern[0] = -1
        for node in range(internal):
            g = n0 + node
            value = x[m.feature[g]]
            if np.isnan(value):
                left_way = m.nan_left[g]
            elif -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD:
                left_way = m.zero_left[g]
            elif m.categorical[g]:  # negatives (and values beyond int32) go right, as in LightGBM
                left_way = False
                if -1.0 < value < 2147483648.0:
                    category = int(value)
                    word = category >> 5
                    if word < m.cat_words[g]:
                        left_way = ((m.bits[m.cat_start[g] + word] >> (category & 31)) & 1) == 1
            else:
                left_way = value <= m.threshold[g]
            here = pattern[node]
            cold = here & ~(np.int64(1) << m.bitpos[g])
            pattern[m.left[g]] = here if left_way else cold
            pattern[m.right[g]] = cold if left_way else here
        l0 = m.leaf_start[tree]
        for leaf in range(internal + 1):
            gl = l0 + leaf
            mask = m.low_mask[gl]
            satisfied = pattern[internal + leaf] & mask
            t0 = m.table_start[gl]
            if t0 < 0:
                _leaf_per_row(phi, satisfied, m.leaf_value[gl], m.path_start[gl], m.path_depth[gl], m,
                              poly, deflated)  # fmt: skip
                continue
            unsatisfied = m.neg_value[gl] * m.table[t0 + satisfied]
            for k in range(width):
                # Both branches computed: a select, not a mispredicted jump, per path feature.
                share = m.ratio[gl, k] * m.table[t0 + ((satisfied ^ (np.int64(1) << k)) & mask)]
                phi[m.leaf_feature[gl, k]] += share if (satisfied >> k) & 1 else unsatisfied


@numba.njit(cache=True, nogil=True, parallel=True)
def _contributions_kernel(X, out, m, slots, depth):  # pragma: no cover - compiled
    n, n_features = X.shape
    for block in numba.prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        phi = np.empty(n_features + 2)
        pattern = np.empty(slots, dtype=np.int64)
        poly = np.empty(depth + 1)
        deflated = np.empty(depth + 1)
        for r in range(block * BLOCK_ROWS, min(n, (block + 1) * BLOCK_ROWS)):
            phi[:] = 0.0
            _explain_row(X[r], phi, m, pattern, poly, deflated)
            out[r, :] = phi[: n_features + 1]


@numba.njit(cache=True, nogil=True, parallel=True)
def _top_k_kernel(X, k, out_index, out_impact, m, slots, depth):  # pragma: no cover - compiled
    n, n_features = X.shape
    for block in numba.prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        phi = np.empty(n_features + 2)
        pattern = np.empty(slots, dtype=np.int64)
        poly = np.empty(depth + 1)
        deflated = np.empty(depth + 1)
        strength = np.empty(k)
        for r in range(block * BLOCK_ROWS, min(n, (block + 1) * BLOCK_ROWS)):
            phi[:] = 0.0
            _explain_row(X[r], phi, m, pattern, poly, deflated)
            # Insertion into a k-long list kept sorted by |impact|; ties keep the lower feature
            # first, as a stable argsort would. O(n_features) a row: most values do not qualify.
            kept = 0
            for j in range(n_features):
                a = abs(phi[j])
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
                out_impact[r, pos] = phi[j]
                kept = min(kept + 1, k)


@numba.njit(cache=True, nogil=True)
def _fill_tables(table, table_start, path_start, path_depth, path_zero, weights):  # pragma: no cover
    """A(P) = H(P) prod_{j not in P} z_j for every pattern P of each tabled leaf."""
    for leaf in range(len(table_start)):
        t0 = table_start[leaf]
        if t0 < 0:
            continue
        d = path_depth[leaf]
        z = path_zero[path_start[leaf] : path_start[leaf] + d]
        n = 1 << d
        product = np.empty(n)  # prod of z over a subset
        poly = np.zeros((n, d + 1))  # e_t of z over a subset
        product[0] = 1.0
        poly[0, 0] = 1.0
        for subset in range(1, n):
            low = 0
            while not (subset >> low) & 1:
                low += 1
            rest = subset & (subset - 1)
            product[subset] = product[rest] * z[low]
            poly[subset, 0] = 1.0
            for t in range(1, d + 1):
                poly[subset, t] = poly[rest, t] + z[low] * poly[rest, t - 1]
        for subset in range(n):
            size = 0
            for bit in range(d):
                size += (subset >> bit) & 1
            h = 0.0
            for s in range(size + 1):
                h += weights[d, s] * poly[subset, size - s]
            table[t0 + subset] = h * product[(n - 1) & ~subset]


@dataclass(frozen=True, eq=False)
class TreeShapExplainer:
    """A LightGBM booster (one output per iteration) flattened for exact TreeSHAP; build it with
    :meth:`from_booster`, then :meth:`contributions` or :meth:`top_k` on float64 rows."""

    n_features: int
    feature_names: list[str]
    trees: FlatTrees
    slots: int  # pattern slots a tree needs: its internal nodes + leaves
    depth: int  # most distinct features on one path

    @property
    def expected_value(self) -> float:
        """The bias column: the mean raw score over the training rows, as LightGBM reports it."""
        return self.trees.expected_value

    @classmethod
    def from_booster(cls, booster: lgb.Booster, num_iteration: int | None = None) -> TreeShapExplainer:
        """Parse ``booster.dump_model(num_iteration)`` into flat arrays and precompute the per-leaf
        tables. ``num_iteration`` None means what ``booster.predict`` uses: the best iteration if
        the booster has one, else all trees. Raises ValueError for models it does not cover
        (several outputs per iteration, linear trees, more than 62 distinct features on a path)."""
        dump = booster.dump_model(num_iteration=num_iteration)
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("TreeShapExplainer covers one output per iteration (binary, regression)")
        if any(tree.get("is_linear") for tree in dump["tree_info"]):
            raise ValueError("TreeShapExplainer does not cover linear trees")
        n_features = int(dump["max_feature_idx"]) + 1
        trees = _flatten([tree["tree_structure"] for tree in dump["tree_info"]], n_features)
        slots = int(2 * trees.node_count.max(initial=0) + 1)
        return cls(n_features, list(dump["feature_names"]), trees, slots, int(trees.weights.shape[0] - 1))

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP values (n, n_features + 1) of the raw score for a 2-D array of rows (float64 as
        LightGBM sees it: categoricals as codes, missing as NaN); the last column is the bias."""
        X = self._checked(X)
        out = np.empty((X.shape[0], self.n_features + 1))
        for start in range(0, X.shape[0], CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            chunk = np.ascontiguousarray(X[start:stop], dtype=np.float64)
            _contributions_kernel(chunk, out[start:stop], self.trees, self.slots, self.depth)
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
        for start in range(0, X.shape[0], CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            chunk = np.ascontiguousarray(X[start:stop], dtype=np.float64)
            _top_k_kernel(chunk, k, index[start:stop], impact[start:stop], self.trees, self.slots, self.depth)
        return index, impact

    def _checked(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a 2-D array with {self.n_features} columns, got shape {X.shape}")
        return X


class _Builder:
    """Accumulates the flat arrays while the dumped trees are walked."""

    def __init__(self) -> None:
        self.nodes: dict[str, list] = {name: [] for name in NODE_FIELDS}
        self.bits: list[int] = []
        self.leaf_value: list[float] = []
        self.leaf_count: list[float] = []
        self.path_start: list[int] = []
        self.path_feature: list[int] = []
        self.path_zero: list[float] = []

    def visit(self, node: dict, features: list[int], zeros: list[float], n0: int, slots: list) -> int:
        """Append ``node``'s subtree (internal nodes in preorder); return its slot for the parent.
        ``slots`` collects (node, side) for children that are leaves, resolved once the tree's
        internal count is known."""
        if "split_index" not in node:
            self.leaf_value.append(float(node["leaf_value"]))
            self.leaf_count.append(float(node["leaf_count"]))
            self.path_start.append(len(self.path_feature))
            self.path_feature.extend(features)
            self.path_zero.extend(zeros)
            return -len(self.leaf_value)  # provisional: minus (global leaf index + 1)
        feature = int(node["split_feature"])
        if feature not in features:
            if len(features) == MAX_PATH_FEATURES:
                raise ValueError(f"a tree path tests more than {MAX_PATH_FEATURES} distinct features")
            features, zeros = [*features, feature], [*zeros, 1.0]
        position = features.index(feature)
        g = len(self.nodes["feature"])
        row = _split_fields(node, self.bits)
        row.update(feature=feature, bitpos=position, left=0, right=0)
        for name in NODE_FIELDS:
            self.nodes[name].append(row[name])
        count = float(node["internal_count"])
        for side in ("left", "right"):
            child = node[f"{side}_child"]
            child_count = float(child["internal_count"] if "split_index" in child else child["leaf_count"])
            child_zeros = list(zeros)
            child_zeros[position] *= child_count / count  # LightGBM's zero fraction of this split
            self.nodes[side][g] = self.visit(child, features, child_zeros, n0, slots)
        return g - n0


NODE_FIELDS = ("feature", "threshold", "categorical", "nan_left", "zero_left", "bitpos", "left", "right",
               "cat_start", "cat_words")  # fmt: skip
MISSING_TYPES = ("None", "Zero", "NaN")


def _split_fields(node: dict, bits: list[int]) -> dict:
    """How a dumped split routes values, as LightGBM's Tree::Decision does on dense rows: NaN is 0
    unless missing_type is NaN; missing_type Zero sends 0 (and NaN) the default way, NaN sends NaN
    the default way; categorical splits send NaN and negatives right, 0 by its bitset bit."""
    missing = node["missing_type"]
    if missing not in MISSING_TYPES:
        raise ValueError(f"unknown missing_type {missing!r} in the model dump")
    default_left = bool(node["default_left"])
    if node["decision_type"] == "==":
        categories = [int(c) for c in str(node["threshold"]).split("||")]
        words = [0] * (max(categories) // 32 + 1)
        for c in categories:
            words[c // 32] |= 1 << (c % 32)
        start = len(bits)
        bits.extend(words)
        return {"threshold": 0.0, "categorical": True, "nan_left": False, "zero_left": 0 in categories,
                "cat_start": start, "cat_words": len(words)}  # fmt: skip
    if node["decision_type"] != "<=":
        raise ValueError(f"unknown decision_type {node['decision_type']!r} in the model dump")
    threshold = float(node["threshold"])
    zero_left = default_left if missing == "Zero" else 0.0 <= threshold
    nan_left = default_left if missing == "NaN" else zero_left
    return {"threshold": threshold, "categorical": False, "nan_left": nan_left, "zero_left": zero_left,
            "cat_start": 0, "cat_words": 0}  # fmt: skip


def _flatten(roots: list[dict], n_features: int) -> FlatTrees:
    """The dumped trees as :class:`FlatTrees`, tables filled."""
    build = _Builder()
    node_start, node_count, leaf_start = [], [], []
    expected_value = 0.0
    for root in roots:
        n0, l0 = len(build.nodes["feature"]), len(build.leaf_value)
        node_start.append(n0)
        leaf_start.append(l0)
        if "split_index" not in root:  # a stump: its value is all bias, no feature shares
            expected_value += float(root["leaf_value"])
            node_count.append(0)
            continue
        build.visit(root, [], [], n0, [])
        internal = len(build.nodes["feature"]) - n0
        node_count.append(internal)
        for side in ("left", "right"):
            slots = build.nodes[side]
            for g in range(n0, n0 + internal):
                if slots[g] < 0:  # a leaf: its slot follows the tree's internal nodes
                    slots[g] = internal + (-slots[g] - 1 - l0)
        # LightGBM's Tree::ExpectedValue: leaves weighted by their share of the root's count.
        total = float(root["internal_count"])
        for leaf in range(l0, len(build.leaf_value)):
            expected_value += (build.leaf_count[leaf] / total) * build.leaf_value[leaf]
    return _pack(build, node_start, node_count, leaf_start, expected_value, n_features)


def _pack(build: _Builder, node_start, node_count, leaf_start, expected_value, n_features) -> FlatTrees:
    nodes = {name: np.asarray(values) for name, values in build.nodes.items()}
    path_start = np.asarray(build.path_start, dtype=np.int64)
    path_feature = np.asarray(build.path_feature, dtype=np.int64)
    path_zero = np.asarray(build.path_zero, dtype=np.float64)
    leaf_value = np.asarray(build.leaf_value, dtype=np.float64)
    path_depth = np.diff(np.append(path_start, len(path_feature))).astype(np.int64)
    depth = int(path_depth.max(initial=1))
    weights = np.zeros((depth + 1, depth + 1))
    for d in range(1, depth + 1):
        for s in range(d):
            weights[d, s] = 1.0 / (d * comb(d - 1, s))  # s! (d-s-1)! / d!
    has_empty_child = np.zeros(len(leaf_value), dtype=bool)
    np.logical_or.at(has_empty_child, np.repeat(np.arange(len(leaf_value)), path_depth), path_zero == 0.0)
    table_start = _table_layout(path_depth, has_empty_child)
    tabled = table_start >= 0
    width = int(path_depth[tabled].max(initial=1))
    leaf_feature = np.full((len(leaf_value), width), n_features + 1, dtype=np.int64)  # the scratch slot
    ratio = np.zeros((len(leaf_value), width))
    for leaf in np.flatnonzero(tabled):
        d, p0 = path_depth[leaf], path_start[leaf]
        z = path_zero[p0 : p0 + d]
        leaf_feature[leaf, :d] = path_feature[p0 : p0 + d]
        ratio[leaf, :d] = leaf_value[leaf] * (1.0 - z) / z
    table = np.empty(int(np.sum(np.left_shift(1, path_depth[tabled]))))
    _fill_tables(table, table_start, path_start, path_depth, path_zero, weights)
    return FlatTrees(
        node_start=np.asarray(node_start, dtype=np.int64),
        node_count=np.asarray(node_count, dtype=np.int64),
        leaf_start=np.asarray(leaf_start, dtype=np.int64),
        feature=nodes["feature"].astype(np.int64),
        threshold=nodes["threshold"].astype(np.float64),
        categorical=nodes["categorical"].astype(np.bool_),
        nan_left=nodes["nan_left"].astype(np.bool_),
        zero_left=nodes["zero_left"].astype(np.bool_),
        bitpos=nodes["bitpos"].astype(np.int64),
        left=nodes["left"].astype(np.int64),
        right=nodes["right"].astype(np.int64),
        cat_start=nodes["cat_start"].astype(np.int64),
        cat_words=nodes["cat_words"].astype(np.int64),
        bits=np.asarray(build.bits, dtype=np.uint32),
        table_start=table_start,
        low_mask=(np.left_shift(np.int64(1), path_depth) - 1).astype(np.int64),
        neg_value=-leaf_value,
        leaf_feature=leaf_feature,
        ratio=ratio,
        table=table,
        leaf_value=leaf_value,
        path_start=path_start,
        path_depth=path_depth,
        path_feature=path_feature,
        path_zero=path_zero,
        weights=weights,
        expected_value=float(expected_value),
    )


def _table_layout(path_depth: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Each leaf's offset in the table, or -1 when computed per row: leaves with an empty child on
    their path (z = 0, no ratio), and the deepest ones until the tables fit TABLE_BUDGET."""
    sizes = np.left_shift(np.int64(1), np.minimum(path_depth, TABLE_DEPTH + 1))
    cap = TABLE_DEPTH
    while cap > 0 and sizes[(path_depth <= cap) & ~excluded].sum() > TABLE_BUDGET:
        cap -= 1
    tabled = (path_depth <= cap) & ~excluded
    ends = np.cumsum(np.where(tabled, sizes, 0))
    return np.where(tabled, ends - sizes, -1).astype(np.int64)
