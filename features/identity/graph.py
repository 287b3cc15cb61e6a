"""The identity graph as arrays: components, collapse guardrails, and when components settle.

Pure NumPy / SciPy over integer node numbers, shared by the all-time stitching at ingest
(:mod:`propensity.features.identity.stitching`) and the graph at an as-of date
(:mod:`propensity.features.identity.as_of`), so that both apply exactly the same rules:

* connected components of the links are profiles, except where a component would collapse
  distinct people: two values of a *unique* namespace (two ``crm_id``\\ s on a shared family
  tablet) split it around them, and more identities than ``max_identities_per_profile`` (a
  test account on hundreds of kiosks) let its anonymous identities go;
* a link carries the time it was first observed, so the graph at ``as_of`` is the links
  observed before it. :func:`unsettled_intervals` finds, once, the times at which a
  component's identities seen so far were not yet the one profile they end up as.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree

from propensity.core.config import IdentityConfig

# A time (int64 microseconds since 1970) before every event: links and identities known
# from the start, e.g. those of a profile-attributes row without a sign-up date.
ALWAYS = -(2**62)


@dataclass
class Collapse:
    """One component the guardrails split, for the run report."""

    reason: str  # "unique_namespace_conflict" | "too_many_identities"
    identities: int
    unique_values: dict[str, int]
    profiles_after_split: int
    separated_identities: int


@dataclass
class Grouping:
    """Nodes grouped into profiles: ``group`` labels (0..k-1), the ``component`` before any
    guardrail split, which components the guardrails looked at, and each split made."""

    component: np.ndarray
    group: np.ndarray
    guarded: np.ndarray  # per component: True when it tripped a guardrail check
    collapses: list[Collapse] = field(default_factory=list)


def _split_component(
    namespaces: np.ndarray, adjacency, identity: IdentityConfig
) -> tuple[np.ndarray, Collapse | None]:
    """Group labels (0..k-1) for the nodes of one component, splitting it if it collapses."""
    size = len(namespaces)
    is_unique = np.isin(namespaces, identity.unique_namespaces)
    is_anonymous = np.isin(namespaces, identity.anonymous_namespaces)
    unique_values = {ns: int((namespaces == ns).sum()) for ns in identity.unique_namespaces}
    conflict = any(count > 1 for count in unique_values.values())
    if not conflict and size <= identity.max_identities_per_profile:
        return np.zeros(size, dtype=np.int64), None

    labels = np.full(size, -1, dtype=np.int64)
    separated = 0
    if conflict:
        seeds = np.flatnonzero(is_unique)
        distance = dijkstra(adjacency, directed=False, unweighted=True, indices=seeds)
        nearest = distance.min(axis=0)
        ties = (distance == nearest).sum(axis=0) > 1
        labels = np.where(ties, -1, distance.argmin(axis=0))
        labels[seeds] = np.arange(len(seeds))
        next_label = len(seeds)
        for position in np.flatnonzero(labels == -1):
            labels[position] = next_label
            next_label += 1
            separated += 1
    else:
        labels[:] = 0

    # Any group still over the limit keeps its known identities; its anonymous ones go alone.
    for group in np.unique(labels):
        members = np.flatnonzero(labels == group)
        if len(members) > identity.max_identities_per_profile:
            anonymous = members[is_anonymous[members]]
            labels[anonymous] = labels.max() + 1 + np.arange(len(anonymous))
            separated += len(anonymous)
    _, labels = np.unique(labels, return_inverse=True)
    collapse = Collapse(
        reason="unique_namespace_conflict" if conflict else "too_many_identities",
        identities=size,
        unique_values=unique_values,
        profiles_after_split=int(labels.max() + 1),
        separated_identities=separated,
    )
    return labels, collapse


def group_identities(
    namespaces: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    identity: IdentityConfig,
    names: np.ndarray | None = None,
) -> Grouping:
    """Profiles of the graph with ``len(namespaces)`` nodes and links ``src[i] -- dst[i]``.

    ``namespaces[i]`` is node i's namespace. Components are split by the guardrails; a
    component's first group keeps the component's number, so groups of unsplit components
    equal their component. ``names`` (an integer per node, in node order within a
    component) says which nodes are the same identity when the graph holds several copies of
    one (the graphs of several dates): a copy with the same identities and as many links
    (links only ever add up) is the same component, split once.
    """
    n = len(namespaces)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)
    component = component.astype(np.int64)
    sizes = np.bincount(component, minlength=1)
    guarded = sizes > identity.max_identities_per_profile
    for ns in identity.unique_namespaces:
        guarded |= np.bincount(component, weights=(namespaces == ns), minlength=len(sizes)) > 1
    group = component.copy()
    collapses: list[Collapse] = []
    if guarded.any():
        next_group = int(sizes.size)
        order = np.argsort(component, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        # Each node's place among its component's members, and the links by component: a
        # component's own small graph costs its size, not the whole graph's.
        place = np.empty(n, dtype=np.int64)
        place[order] = np.arange(n) - starts[component[order]]
        link_order = np.argsort(component[src], kind="stable")
        link_starts = np.searchsorted(component[src][link_order], np.arange(sizes.size + 1))
        splits: dict[tuple[bytes, int], tuple[np.ndarray, Collapse | None]] = {}
        for comp in np.flatnonzero(guarded):
            members = order[starts[comp] : starts[comp + 1]]
            own = link_order[link_starts[comp] : link_starts[comp + 1]]
            seen = (names[members].tobytes(), len(own)) if names is not None else None
            if seen in splits:
                labels, collapse = splits[seen]
            else:
                labels, collapse = _split_component(
                    namespaces[members], _own_graph(members, own, place, src, dst), identity
                )
                if seen is not None:
                    splits[seen] = labels, collapse
            if collapse is None:
                continue
            collapses.append(collapse)
            # Label 0 keeps the component's number; the others get fresh group numbers.
            extra = labels > 0
            group[members[extra]] = next_group + labels[extra] - 1
            next_group += int(labels.max())
    return Grouping(component=component, group=group, guarded=guarded[: sizes.size], collapses=collapses)


def _own_graph(members: np.ndarray, own: np.ndarray, place: np.ndarray, src: np.ndarray, dst: np.ndarray):
    """The symmetric adjacency of one component's ``members`` from its links ``own``."""
    size = len(members)
    return coo_matrix(
        (
            np.ones(2 * len(own), dtype=np.int8),
            (
                np.concatenate([place[src[own]], place[dst[own]]]),
                np.concatenate([place[dst[own]], place[src[own]]]),
            ),
        ),
        shape=(size, size),
    ).tocsr()


@dataclass(frozen=True)
class Unsettled:
    """Per row, a component and an interval of as-of times ``(after, until]`` (int64 µs;
    ``after == ALWAYS``: from the start) in which its identities seen before ``as_of`` were
    not the profiles the whole history makes of them."""

    component: np.ndarray
    after: np.ndarray
    until: np.ndarray


def unsettled_intervals(
    grouping: Grouping,
    node_time: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    link_time: np.ndarray,
) -> Unsettled:
    """When each component differs, at an as-of time, from what the whole history makes of it.

    At as-of time ``d`` the graph holds the nodes first seen before ``d`` and the links first
    observed before ``d`` (times in int64 µs, :data:`ALWAYS` for "from the start"). A
    component without guardrail trouble is one profile at ``d`` exactly when its part of that
    graph is connected. A minimum spanning forest with link times as weights holds, below
    any threshold, a spanning forest of the links below it; so the number of pieces at ``d``
    is (nodes before ``d``) - (forest links before ``d``): one forest for every date.
    Components the guardrails looked at are unsettled from the start until their last node
    or link arrives (from then on the graph at ``d`` is the whole one). Links must be unique
    pairs ``src < dst`` carrying their earliest time.
    """
    component, n = grouping.component, len(node_time)
    n_components = int(component.max()) + 1 if n else 0
    times, ranks = np.unique(np.concatenate([node_time, link_time]), return_inverse=True)
    node_rank, link_rank = ranks[:n], ranks[n:]
    # Ranks + 1 as weights: exact small floats, and never 0 (which sparse graphs drop).
    graph = coo_matrix((link_rank + 1.0, (src, dst)), shape=(n, n)).tocsr()
    forest = minimum_spanning_tree(graph).tocoo()
    forest_comp, forest_rank = component[forest.row], forest.data.astype(np.int64) - 1

    sizes = np.bincount(component, minlength=n_components)
    plain = (sizes > 1) & ~grouping.guarded
    keep_nodes, keep_links = plain[component], plain[forest_comp]
    comp = np.concatenate([component[keep_nodes], forest_comp[keep_links]])
    rank = np.concatenate([node_rank[keep_nodes], forest_rank[keep_links]])
    delta = np.concatenate([np.ones(keep_nodes.sum(), np.int64), -np.ones(keep_links.sum(), np.int64)])
    comp, rank, split = _split_steps(comp, rank, delta)

    guarded = np.flatnonzero(grouping.guarded & (sizes > 0))
    last = np.full(n_components, -1, np.int64)
    np.maximum.at(last, component, node_rank)
    np.maximum.at(last, component[src], link_rank)
    guarded = guarded[times[last[guarded]] != ALWAYS]
    return Unsettled(
        component=np.concatenate([comp[split], guarded]),
        after=np.concatenate([times[rank[split]], np.full(len(guarded), ALWAYS, np.int64)]),
        until=np.concatenate([times[rank[split + 1]], times[last[guarded]]]),
    )


def _split_steps(
    comp: np.ndarray, rank: np.ndarray, delta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component, the time steps at which its piece count changes (``delta``: +1 per node,
    -1 per forest link, at its time rank), and which steps leave it in two or more pieces.

    Returns (component, rank) per step and the indices of the split steps.
    """
    if not len(comp):
        return comp, rank, np.zeros(0, np.int64)
    order = np.lexsort((rank, comp))
    comp, rank, delta = comp[order], rank[order], delta[order]
    new_step = np.concatenate([[True], (comp[1:] != comp[:-1]) | (rank[1:] != rank[:-1])])
    steps = np.flatnonzero(new_step)
    comp, rank = comp[steps], rank[steps]
    pieces = np.cumsum(np.add.reduceat(delta, steps))
    # Every component ends as one piece, so earlier components add one each to the
    # running count: subtract their number to count each component's own pieces.
    earlier = np.zeros(len(comp), np.int64)
    firsts = np.flatnonzero(np.concatenate([[True], comp[1:] != comp[:-1]]))
    earlier[firsts] = np.arange(len(firsts))
    pieces -= np.maximum.accumulate(earlier)
    # Pieces after step k hold for as-of times in (time of step k, time of step k + 1].
    split = np.flatnonzero((pieces[:-1] >= 2) & (comp[:-1] == comp[1:]))
    return comp, rank, split
