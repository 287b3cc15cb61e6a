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
from typing import NamedTuple

import lightgbm as lgb
import numba
import numpy as np

# LightGBM's kZeroThreshold (a float literal widened to double): dense rows drop values this close
# to zero before predicting, and missing_type Zero treats them as missing.
ZERO_THRESHOLD = float(np.float32(1e-35))
MAX_PATH_FEATURES = 62  # which path features a row satisfies is a 64-bit mask
BLOCK_ROWS = 4096  # rows a thread converts to float64 and explains at a time
MISSING_TYPES = ("None", "Zero", "NaN")
# Unsigned constants: kernel indices stay uint64 (mixing in a signed int would make them floats).
U0, U1, U2, U3, U4, U5, U31 = (np.uint64(i) for i in (0, 1, 2, 3, 4, 5, 31))


class FlatTrees(NamedTuple):
    """The model as the kernels read it. A tree's slots are its internal nodes in preorder, then
    its leaves; the edge into a slot belongs to that slot. Per-edge arrays are indexed by the
    tree's ``slot_start`` + slot (the last row is a neutral edge, all factors 1); rows of Q
    values are stored flat."""

    node_start: np.ndarray  # int64 (trees,)
    node_count: np.ndarray  # int64 (trees,): internal nodes; the tree has node_count + 1 leaves
    slot_start: np.ndarray  # int64 (trees,)
    feature: np.ndarray  # int64 (nodes,)
    threshold: np.ndarray  # float64 (nodes,): numeric splits go left when x <= threshold
    categorical: np.ndarray  # bool (nodes,): split by the category bitset instead
    nan_left: np.ndarray  # bool (nodes,): where NaN goes (LightGBM's missing_type rules)
    zero_left: np.ndarray  # bool (nodes,): where 0 (|x| <= ZERO_THRESHOLD) goes
    bitpos: np.ndarray  # int64 (nodes,): the split feature's bit among the path's distinct features
    left: np.ndarray  # int64 (nodes,): child slot
    right: np.ndarray  # int64 (nodes,)
    cat_start: np.ndarray  # int64 (nodes,): first word of the bitset in ``bits``
    cat_words: np.ndarray  # int64 (nodes,)
    bits: np.ndarray  # uint32: categories going left, LightGBM's bitset layout
    # (edges + 1, 3, Q): what the edge multiplies the path product by: F_o / F_o' of the path's
    # previous edge on the feature (1 if none) for (o', o) = (0, 0), (1, 0), (1, 1) as index o' + o,
    # times the leaf value on an edge into a leaf.
    multiplier: np.ndarray
    share: np.ndarray  # (edges + 1, 2, Q): w (o - z) / F_o for o = 0, 1; w the quadrature weights
    handover_start: np.ndarray  # uint64 (trees + 1,): where each tree's list starts in ``handover``
    # uint64 (entries x 3, flat): feature, child slot, slot of a nearest split on the same feature
    # at or below that child: the leaves under it belong to that deeper split's edges.
    handover: np.ndarray
    expected_value: float  # the bias: sum over trees of the count-weighted mean leaf value
    points: tuple  # the Gauss-Legendre points on [0, 1]; kernels compile for their count


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
        trees = _flatten([tree["tree_structure"] for tree in dump["tree_info"]])
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


NODE_FIELDS = (
    "feature",
    "threshold",
    "categorical",
    "nan_left",
    "zero_left",
    "bitpos",
    "left",
    "right",
    "cat_start",
    "cat_words",
)  # fmt: skip


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
    zero_left = default_left if missing == "Zero" else threshold >= 0.0
    nan_left = default_left if missing == "NaN" else zero_left
    return {"threshold": threshold, "categorical": False, "nan_left": nan_left, "zero_left": zero_left,
            "cat_start": 0, "cat_words": 0}  # fmt: skip


def _count(node: dict) -> float:
    return float(node["internal_count"] if "split_index" in node else node["leaf_count"])


class _Builder:
    """Accumulates the flat arrays tree by tree from the dump."""

    def __init__(self) -> None:
        self.nodes: dict[str, list] = {name: [] for name in NODE_FIELDS}
        self.bits: list[int] = []
        self.slot_value: list[float] = []  # per global slot: 1, or the leaf's value
        self.edge_zero: list[float] = []  # per global slot: z of the edge into it (1 for a root)
        self.previous: list[int] = []  # per global slot: global slot of the previous same-feature edge
        self.handover: list[tuple[int, int, int]] = []  # (feature, child slot, deeper split slot)
        self.handover_start: list[int] = []
        self.node_start: list[int] = []
        self.node_count: list[int] = []
        self.slot_start: list[int] = []
        self.depth = 1
        self.expected_value = 0.0

    def add_tree(self, root: dict) -> None:
        internal: list[dict] = []
        leaves: list[dict] = []
        _number(root, internal, leaves)
        slot = {id(node): i for i, node in enumerate(internal)}
        slot.update({id(leaf): len(internal) + j for j, leaf in enumerate(leaves)})
        s0 = len(self.edge_zero)
        self.node_start.append(len(self.nodes["feature"]))
        self.node_count.append(len(internal))
        self.slot_start.append(s0)
        self.slot_value.extend([1.0] * len(internal) + [float(leaf["leaf_value"]) for leaf in leaves])
        n_slots = 2 * len(internal) + 1
        self.edge_zero.extend([1.0] * n_slots)
        self.previous.extend([-1] * n_slots)
        self.handover_start.append(len(self.handover))
        self.nodes_of_tree = [dict.fromkeys(NODE_FIELDS) for _ in internal]
        if internal:
            self._walk(root, [], [], [], slot, s0)
            # LightGBM's Tree::ExpectedValue: leaves weighted by their share of the root's count.
            total = _count(root)
            self.expected_value += sum((_count(leaf) / total) * float(leaf["leaf_value"]) for leaf in leaves)
        else:  # a stump: its value is all bias, no feature shares
            self.expected_value += float(root["leaf_value"])
        for row in self.nodes_of_tree:
            for name in NODE_FIELDS:
                self.nodes[name].append(row[name])

    def _walk(self, node: dict, features: list, zeros: list, last: list, slot: dict, s0: int) -> None:
        """Record ``node`` and the edges to its children: z of the edge (product over the path's
        splits on this feature), the previous same-feature edge, the deeper splits taking over."""
        feature = int(node["split_feature"])
        if feature not in features:
            if len(features) == MAX_PATH_FEATURES:
                raise ValueError(f"a tree path tests more than {MAX_PATH_FEATURES} distinct features")
            features, zeros, last = [*features, feature], [*zeros, 1.0], [*last, -1]
        position = features.index(feature)
        row = _split_fields(node, self.bits)
        row.update(feature=feature, bitpos=position)
        count = _count(node)
        for side in ("left", "right"):
            child = node[f"{side}_child"]
            child_slot = slot[id(child)]
            row[side] = child_slot
            if _count(child) <= 0 or count <= 0:
                raise ValueError("a split with an empty side (count 0): its SHAP values are undefined")
            child_zeros = list(zeros)
            child_zeros[position] *= _count(child) / count  # LightGBM's zero fraction of this split
            edge = s0 + child_slot
            self.edge_zero[edge] = child_zeros[position]
            self.previous[edge] = last[position]
            self.handover.extend((feature, child_slot, slot[id(n)]) for n in _nearest_splits(child, feature))
            child_last = list(last)
            child_last[position] = edge
            if "split_index" in child:
                self._walk(child, features, child_zeros, child_last, slot, s0)
            else:
                self.depth = max(self.depth, len(features))
        self.nodes_of_tree[slot[id(node)]] = row


def _number(node: dict, internal: list[dict], leaves: list[dict]) -> None:
    """Internal nodes in preorder, leaves in visiting order."""
    if "split_index" not in node:
        leaves.append(node)
        return
    internal.append(node)
    _number(node["left_child"], internal, leaves)
    _number(node["right_child"], internal, leaves)


def _nearest_splits(node: dict, feature: int) -> list[dict]:
    """The splits on ``feature`` at or below ``node`` with no such split between them and it."""
    if "split_index" not in node:
        return []
    if int(node["split_feature"]) == feature:
        return [node]
    return _nearest_splits(node["left_child"], feature) + _nearest_splits(node["right_child"], feature)


def _flatten(roots: list[dict]) -> FlatTrees:
    """The dumped trees as :class:`FlatTrees`, with the per-edge factors at the quadrature points."""
    build = _Builder()
    for root in roots:
        build.add_tree(root)
    # Gauss-Legendre on [0, 1]: ceil(depth / 2) points integrate the degree < depth integrands exactly.
    x, w = np.polynomial.legendre.leggauss((build.depth + 1) // 2)
    t, w = (x + 1.0) / 2.0, w / 2.0
    neutral = len(build.edge_zero)
    z = np.append(build.edge_zero, 1.0)[:, None]
    factor = np.stack([z * (1.0 - t), z + (1.0 - z) * t], axis=1)  # (edges + 1, o, Q)
    factor[neutral] = 1.0
    previous = np.asarray([*build.previous, neutral], dtype=np.int64)
    previous[previous < 0] = neutral
    multiplier = np.stack(
        [
            factor[:, 0] / factor[previous, 0],
            factor[:, 0] / factor[previous, 1],
            factor[:, 1] / factor[previous, 1],
        ],
        axis=1,
    )
    # An edge into a leaf also multiplies by the leaf's value: the downward product arriving at a
    # leaf is then the leaf's term of its subtree sums.
    multiplier *= np.append(build.slot_value, 1.0)[:, None, None]
    share = np.stack(
        [np.broadcast_to(-w / (1.0 - t), factor[:, 0].shape), w * (1.0 - z) / factor[:, 1]], axis=1
    )
    nodes = {name: np.asarray(values) for name, values in build.nodes.items()}

    def ints(values) -> np.ndarray:
        return np.asarray(values, dtype=np.uint64)

    return FlatTrees(
        node_start=ints(build.node_start),
        node_count=ints(build.node_count),
        slot_start=ints(build.slot_start),
        feature=ints(nodes["feature"]),
        threshold=nodes["threshold"].astype(np.float64),
        categorical=nodes["categorical"].astype(np.bool_),
        nan_left=nodes["nan_left"].astype(np.bool_),
        zero_left=nodes["zero_left"].astype(np.bool_),
        bitpos=ints(nodes["bitpos"]),
        left=ints(nodes["left"]),
        right=ints(nodes["right"]),
        cat_start=ints(nodes["cat_start"]),
        cat_words=ints(nodes["cat_words"]),
        bits=np.asarray(build.bits, dtype=np.uint32),
        multiplier=np.ascontiguousarray(multiplier).ravel(),
        share=np.ascontiguousarray(share).ravel(),
        handover_start=ints([*build.handover_start, len(build.handover)]),
        handover=ints(build.handover).ravel(),
        expected_value=float(build.expected_value),
        points=tuple(float(p) for p in t),
    )
