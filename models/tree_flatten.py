"""LightGBM's dumped trees (``booster.dump_model()``) flattened into the arrays the TreeSHAP
kernels of :mod:`propensity.models.treeshap` read: per node the split (numeric threshold or
category bitset, where missing values and zeros go), per edge the path factors precomputed
at the Gauss-Legendre points, and the hand-over lists for features split again lower down.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_PATH_FEATURES = 62  # which path features a row satisfies is a 64-bit mask
MISSING_TYPES = ("None", "Zero", "NaN")
# LightGBM's kZeroThreshold (a float literal widened to double): dense rows drop values this close
# to zero before predicting, and missing_type Zero treats them as missing.
ZERO_THRESHOLD = float(np.float32(1e-35))


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
    # float64 (edges + 1,): per slot, the leaf's value (0 on an internal node's slot): raw scores
    # add the value of the leaf each row reaches, tree by tree, as LightGBM's predict does.
    leaf_value: np.ndarray
    expected_value: float  # the bias: sum over explained trees of the count-weighted mean leaf value
    points: tuple  # the Gauss-Legendre points on [0, 1]; kernels compile for their count
    part: np.ndarray  # uint64 (trees,): which raw score (0 .. parts - 1) the tree's leaf adds to
    explained: np.ndarray  # bool (trees,): whether the tree's leaves count in SHAP values and bias
    parts: int  # raw scores the kernels sum (1 for one booster)


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


def sample_count(node: dict) -> float:
    return float(node["internal_count"] if "split_index" in node else node["leaf_count"])


class _Builder:
    """Accumulates the flat arrays tree by tree from the dump."""

    def __init__(self) -> None:
        self.nodes: dict[str, list] = {name: [] for name in NODE_FIELDS}
        self.bits: list[int] = []
        self.slot_value: list[float] = []  # per global slot: 1, or the leaf's value
        self.leaf_slot: list[bool] = []  # per global slot: is it a leaf's
        self.edge_zero: list[float] = []  # per global slot: z of the edge into it (1 for a root)
        self.previous: list[int] = []  # per global slot: global slot of the previous same-feature edge
        self.handover: list[tuple[int, int, int]] = []  # (feature, child slot, deeper split slot)
        self.handover_start: list[int] = []
        self.node_start: list[int] = []
        self.node_count: list[int] = []
        self.slot_start: list[int] = []
        self.depth = 1
        self.expected_value = 0.0

    def add_tree(self, root: dict, explained: bool = True) -> None:
        """Append one dumped tree; one not ``explained`` adds nothing to the bias nor to the
        depth the quadrature is sized for (its path factors are never read)."""
        depth, expected_value = self.depth, self.expected_value
        self._add(root)
        if not explained:
            self.depth, self.expected_value = depth, expected_value

    def _add(self, root: dict) -> None:
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
        self.leaf_slot.extend([False] * len(internal) + [True] * len(leaves))
        n_slots = 2 * len(internal) + 1
        self.edge_zero.extend([1.0] * n_slots)
        self.previous.extend([-1] * n_slots)
        self.handover_start.append(len(self.handover))
        self.nodes_of_tree = [dict.fromkeys(NODE_FIELDS) for _ in internal]
        if internal:
            self._walk(root, [], [], [], slot, s0)
            # LightGBM's Tree::ExpectedValue: leaves weighted by their share of the root's count.
            total = sample_count(root)
            self.expected_value += sum(
                (sample_count(leaf) / total) * float(leaf["leaf_value"]) for leaf in leaves
            )
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
        count = sample_count(node)
        for side in ("left", "right"):
            child = node[f"{side}_child"]
            child_slot = slot[id(child)]
            row[side] = child_slot
            if sample_count(child) <= 0 or count <= 0:
                raise ValueError("a split with an empty side (count 0): its SHAP values are undefined")
            child_zeros = list(zeros)
            child_zeros[position] *= sample_count(child) / count  # LightGBM's zero fraction of this split
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


def _edge_factors(build: _Builder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The quadrature points ``t`` and, per edge, the multipliers and shares the explanation
    kernel applies at them (the last edge: the neutral one, factor 1)."""
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
    return t, multiplier, share


def flatten_trees(
    roots: list[dict], parts: list[int] | None = None, explained: list[bool] | None = None
) -> FlatTrees:
    """The dumped trees as :class:`FlatTrees`, with the per-edge factors at the quadrature points;
    ``parts`` and ``explained`` per tree (default: one part, all explained, as one booster)."""
    parts = [0] * len(roots) if parts is None else [int(p) for p in parts]
    explained = [True] * len(roots) if explained is None else [bool(e) for e in explained]
    if len(parts) != len(roots) or len(explained) != len(roots) or min(parts, default=0) < 0:
        raise ValueError("parts and explained need one entry per tree, parts numbered from 0")
    build = _Builder()
    for root, keep in zip(roots, explained, strict=True):
        build.add_tree(root, keep)
    t, multiplier, share = _edge_factors(build)
    nodes = {name: np.asarray(values) for name, values in build.nodes.items()}
    leaf_slot = np.asarray(build.leaf_slot, dtype=np.bool_)

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
        leaf_value=np.append(np.where(leaf_slot, build.slot_value, 0.0), 0.0),
        expected_value=float(build.expected_value),
        points=tuple(float(p) for p in t),
        part=ints(parts),
        explained=np.asarray(explained, dtype=np.bool_),
        parts=max(parts, default=0) + 1,
    )
