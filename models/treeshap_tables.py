"""Exact TreeSHAP from per-leaf tables: for shallow trees, each leaf's SHAP values precomputed for
every pattern of which of its path's features a row satisfies, so a row's explanation is a lookup
per leaf and path feature (the idea of Fast TreeSHAP v2, Yang 2021).

A leaf with value ``v`` whose root path tests the ``d`` distinct features ``D`` (each with ``z_j``,
the product over j's splits on the path of child count / parent count) gives feature ``k`` of its
path, for a row satisfying all of j's splits (``o_j = 1``) or not (``o_j = 0``),

    v (o_k - z_k) * integral_0^1 prod_{j in D, j != k} (z_j + (o_j - z_j) t) dt

which depends on the row only through the ``d`` bits ``o``: the table holds it for all ``2^d``
patterns (the integral by Gauss-Legendre with ``ceil(d / 2)`` points, exact for its degree
``d - 1``). The kernel routes a row's group down each tree once, as :mod:`.treeshap` does, which
leaves every leaf's pattern in its slot, then adds ``d`` looked-up values per leaf: about twice
the rows per second of the Linear-TreeSHAP pass on a 300-tree depth-6 model, within 1e-15 of
``pred_contrib``. A leaf costs ``d 2^d`` doubles, so the tables are built only while every path
tests at most TABLE_MAX_PATH features and all of them fit TABLE_MAX_VALUES.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from propensity.models.tree_flatten import ZERO_THRESHOLD, FlatTrees, sample_count

TABLE_MAX_PATH = 8  # distinct features on a path: 2048 values a leaf at most
TABLE_MAX_VALUES = 1 << 23  # 64 MiB of tables (a 300-tree depth-6 model takes about 2.2M values)
# Rows explained together per tree pass: a tree's tables (up to ~100 KiB at depth 6) are read
# from cache once per group, so larger groups than the Linear-TreeSHAP pass's (measured on a
# 300-tree depth-6 model: 64 rows 1.0x, 256 2.0x, 1024 2.2x that pass's rows per CPU-second).
TABLE_GROUP_ROWS = 1024
TABLE_GROUP_BYTES = 1 << 19  # fewer rows for big trees: a group's patterns stay in the core's cache
U0, U1, U5, U31 = (np.uint64(i) for i in (0, 1, 5, 31))


class LeafTables(NamedTuple):
    """Per global slot (as :class:`~.tree_flatten.FlatTrees` numbers them) of a leaf of an
    explained tree: its path's distinct features and where its table starts; internal nodes and
    unexplained trees' leaves have depth 0. Empty arrays: no tables (too deep or too big)."""

    depth: np.ndarray  # uint64 (slots,): distinct features on the leaf's path
    start: np.ndarray  # uint64 (slots,): first value of the leaf's table in ``values``
    features: np.ndarray  # uint64 (slots x TABLE_MAX_PATH, flat): the path's features by bit
    values: np.ndarray  # float64: per leaf, d rows (path feature) of 2^d values (pattern)


NO_TABLES = LeafTables(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0))


def _leaf_paths(node: dict, features: list, zeros: list, out: list) -> None:
    """Per leaf in visiting order: (distinct path features in order of first test, their z, value),
    the features numbered as :mod:`.tree_flatten` numbers the path bits."""
    if "split_index" not in node:
        out.append((features, zeros, float(node["leaf_value"])))
        return
    feature = int(node["split_feature"])
    if feature not in features:
        features, zeros = [*features, feature], [*zeros, 1.0]
    position = features.index(feature)
    for side in ("left_child", "right_child"):
        child_zeros = list(zeros)
        child_zeros[position] *= sample_count(node[side]) / sample_count(node)
        _leaf_paths(node[side], features, child_zeros, out)


@numba.njit(cache=True, nogil=True)
def _fill_tables(zeros, values, t, w, out):  # pragma: no cover - compiled
    """``out[leaf, k, pattern]``: the SHAP value of path feature ``k`` for a row whose satisfied
    path features are the bits of ``pattern``; ``zeros`` (leaves, d), ``values`` (leaves,)."""
    leaves, d = zeros.shape
    for leaf in range(leaves):
        for pattern in range(1 << d):
            for k in range(d):
                integral = 0.0
                for q in range(len(t)):
                    product = 1.0
                    for j in range(d):
                        if j != k:
                            z = zeros[leaf, j]
                            product *= z + (((pattern >> j) & 1) - z) * t[q]
                    integral += w[q] * product
                out[leaf, k, pattern] = values[leaf] * (((pattern >> k) & 1) - zeros[leaf, k]) * integral


def _table_values(d: int, zeros: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The tables of leaves whose paths test ``d`` features: (leaves, d, 2^d)."""
    x, w = np.polynomial.legendre.leggauss(max(1, (d + 1) // 2))
    out = np.empty((len(values), d, 1 << d))
    _fill_tables(zeros, values, (x + 1.0) / 2.0, w / 2.0, out)
    return out


def leaf_tables(roots: list[dict], trees: FlatTrees) -> LeafTables:
    """The tables of the explained trees among ``roots`` (the dump's ``tree_structure`` dicts that
    ``trees`` was flattened from), or NO_TABLES when a path tests more than TABLE_MAX_PATH
    features or the tables would pass TABLE_MAX_VALUES."""
    slots = int(trees.leaf_value.shape[0] - 1)
    by_depth: dict[int, list[tuple[int, list, list, float]]] = {}
    total = 0
    for tree, root in enumerate(roots):
        if not trees.explained[tree] or trees.node_count[tree] == 0:
            continue
        paths: list = []
        _leaf_paths(root, [], [], paths)
        first_leaf = int(trees.slot_start[tree] + trees.node_count[tree])
        for j, (features, zeros, value) in enumerate(paths):
            d = len(features)
            total += d << d
            if d > TABLE_MAX_PATH or total > TABLE_MAX_VALUES:
                return NO_TABLES
            by_depth.setdefault(d, []).append((first_leaf + j, features, zeros, value))
    depth = np.zeros(slots, np.uint64)
    start = np.zeros(slots, np.uint64)
    features = np.zeros(slots * TABLE_MAX_PATH, np.uint64)
    values = np.empty(total)
    offset = 0
    for d, leaves in sorted(by_depth.items()):
        tables = _table_values(
            d, np.array([leaf[2] for leaf in leaves]), np.array([leaf[3] for leaf in leaves])
        )
        for (slot, path, _, _), table in zip(leaves, tables, strict=True):
            depth[slot], start[slot] = d, offset
            features[slot * TABLE_MAX_PATH : slot * TABLE_MAX_PATH + d] = path
            values[offset : offset + (d << d)] = table.ravel()
            offset += d << d
    return LeafTables(depth, start, features, values)


@numba.njit(cache=True, nogil=True)
def explain_group_tables(XT, n, phi, raw, m, tb, pattern):  # pragma: no cover - compiled
    """:func:`.treeshap._explain_group` by table lookups: route the group's rows down each tree
    (each slot's ``pattern``: bit b set while the row satisfies every split so far on the path's
    b-th feature), add the reached leaf's value to ``raw`` in LightGBM's order, then per leaf and
    path feature add the table value of the row's pattern to ``phi``."""
    n = np.uint64(n)
    width = np.uint64(TABLE_MAX_PATH)
    for tree in range(len(m.node_start)):
        internal = m.node_count[tree]
        n0 = m.node_start[tree]
        s0 = m.slot_start[tree]
        raw_part = raw[m.part[tree]]
        if internal == U0:  # a stump adds its value to the score and nothing to a feature
            stump = m.leaf_value[s0]
            for r in range(n):
                raw_part[r] += stump
            continue
        for r in range(n):
            pattern[0, r] = ~U0
        for node in range(internal):
            g = n0 + node
            xs = XT[m.feature[g]]
            bit = U1 << m.bitpos[g]
            a, b = m.left[g], m.right[g]
            # LightGBM's Tree::Decision on dense float64 rows, as in treeshap._explain_group.
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
                    here = pattern[node, r]
                    pattern[a, r] = here if left_way else here & ~bit
                    pattern[b, r] = here & ~bit if left_way else here
            else:  # NaN fails both comparisons, so the last select alone decides it
                threshold, nan_left, zero_left = m.threshold[g], m.nan_left[g], m.zero_left[g]
                for r in range(n):
                    x_g = xs[r]
                    left_way = x_g <= threshold
                    left_way = zero_left if (x_g >= -ZERO_THRESHOLD) & (x_g <= ZERO_THRESHOLD) else left_way
                    left_way = nan_left if np.isnan(x_g) else left_way
                    here = pattern[node, r]
                    pattern[a, r] = here if left_way else here & ~bit
                    pattern[b, r] = here & ~bit if left_way else here
        # The row reaches the one leaf whose path it follows at every split: no bit cleared.
        for leaf in range(internal, internal + internal + U1):
            leaf_value = m.leaf_value[s0 + leaf]
            for r in range(n):
                raw_part[r] += leaf_value if pattern[leaf, r] == ~U0 else 0.0
        if not m.explained[tree]:
            continue
        for leaf in range(internal, internal + internal + U1):
            slot = s0 + leaf
            d = tb.depth[slot]
            mask = (U1 << d) - U1
            for k in range(d):
                phi_k = phi[tb.features[slot * width + k]]
                table = tb.start[slot] + (np.uint64(k) << d)
                for r in range(n):
                    phi_k[r] += tb.values[table + (pattern[leaf, r] & mask)]
