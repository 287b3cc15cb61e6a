"""Identity stitching: identities seen together become one profile, with collapse guardrails.

Nodes are ``namespace:value`` strings; an edge joins identities that appear on the same
event row or the same profile-attributes row. Connected components (scipy, vectorised) are
profiles, except where a component would collapse distinct people:

* it holds two values of a *unique* namespace (two ``crm_id``\\ s), e.g. a shared family
  tablet or a store kiosk: each identity then joins its nearest unique-namespace anchor,
  and identities equally near two anchors (the shared device) become profiles of their own;
* it holds more identities than ``max_identities_per_profile`` (test accounts signed in on
  hundreds of devices): its anonymous identities become profiles of their own.

Each such split is reported. ``profile_id`` is a hash of the component's smallest identity,
so the same inputs always give the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from propensity.core.config import IdentityConfig
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.engine import sql_ident, sql_string

SEPARATOR = ":"


@dataclass
class Collapse:
    """One component the guardrails split, for the run report."""

    reason: str  # "unique_namespace_conflict" | "too_many_identities"
    identities: int
    unique_values: dict[str, int]
    profiles_after_split: int
    separated_identities: int


@dataclass
class StitchResult:
    """Counts of the stitched identity graph and every guardrail split."""

    profiles: int
    known_profiles: int
    identities: int
    collapses: list[Collapse] = field(default_factory=list)


def _node_list_sql(namespaces: list[str]) -> str:
    items = ", ".join(f"{sql_string(n + SEPARATOR)} || {sql_ident(n)}" for n in namespaces)
    return f"list_filter([{items}], lambda x: x IS NOT NULL)"


def anchor_sql(namespaces: list[str], alias: str = "") -> str:
    """The node an event row is attributed through: its first identity in precedence order."""
    prefix = f"{alias}." if alias else ""
    return (
        "coalesce("
        + ", ".join(f"{sql_string(n + SEPARATOR)} || {prefix}{sql_ident(n)}" for n in namespaces)
        + ")"
    )


def _split_component(
    nodes: np.ndarray,
    namespaces: np.ndarray,
    adjacency,
    identity: IdentityConfig,
) -> tuple[np.ndarray, Collapse | None]:
    """Group labels (0..k-1) for the nodes of one component, splitting it if it collapses."""
    size = len(nodes)
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


def stitch(con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_profiles: bool) -> StitchResult:
    """Build the temp table ``identity_map`` (namespace, value, node, profile_id, profile_key).

    Reads ``clean_events`` and, when ``with_profiles``, ``profile_attributes``.
    ``profile_key`` numbers the profiles 0, 1, ... in ``profile_id`` order: a compact key for
    this ingest's group-bys and joins, not an identifier to keep (it shifts as profiles come).
    """
    namespaces = identity.namespaces
    columns = ", ".join(sql_ident(n) for n in namespaces)
    # Distinct identity tuples first: millions of events share a few hundred thousand.
    sources = [
        f"SELECT {_node_list_sql(namespaces)} AS ids FROM (SELECT DISTINCT {columns} FROM clean_events)"
    ]
    if with_profiles:
        present = [
            n
            for n in namespaces
            if n in {r[0] for r in con.execute("DESCRIBE profile_attributes").fetchall()}
        ]
        sources.append(
            f"SELECT {_node_list_sql(present)} AS ids FROM (SELECT DISTINCT "
            f"{', '.join(sql_ident(n) for n in present)} FROM profile_attributes)"
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE id_rows AS SELECT DISTINCT ids FROM ({' UNION ALL '.join(sources)})"
    )
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_nodes AS
        SELECT node, (row_number() OVER (ORDER BY node) - 1)::BIGINT AS idx
        FROM (SELECT DISTINCT unnest(ids) AS node FROM id_rows)
    """)
    edges = con.execute("""
        SELECT DISTINCT a.idx, b.idx FROM (
            SELECT ids[1] AS a, unnest(ids[2:]) AS b FROM id_rows WHERE len(ids) > 1
        ) e JOIN id_nodes a ON e.a = a.node JOIN id_nodes b ON e.b = b.node
    """).fetchnumpy()
    node_table = con.execute(
        f"SELECT idx, split_part(node, {sql_string(SEPARATOR)}, 1) AS namespace FROM id_nodes ORDER BY idx"
    ).fetchnumpy()
    n = len(node_table["idx"])
    node_namespace = np.asarray(node_table["namespace"], dtype=object)
    src = np.asarray(edges["idx"], dtype=np.int64)
    dst = np.asarray(edges["idx_1"], dtype=np.int64)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)

    sizes = np.bincount(component)
    suspicious = sizes > identity.max_identities_per_profile
    for ns in identity.unique_namespaces:
        suspicious |= np.bincount(component, weights=(node_namespace == ns), minlength=len(sizes)) > 1
    group = component.astype(np.int64)
    collapses: list[Collapse] = []
    if suspicious.any():
        symmetric = (graph + graph.T).tocsr()
        next_group = int(group.max()) + 1
        order = np.argsort(component, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for comp in np.flatnonzero(suspicious):
            members = order[starts[comp] : starts[comp + 1]]
            sub = symmetric[members][:, members]
            labels, collapse = _split_component(members, node_namespace[members], sub, identity)
            if collapse is None:
                continue
            collapses.append(collapse)
            # Label 0 keeps the component's id; the others get fresh group numbers.
            extra = labels > 0
            group[members[extra]] = next_group + labels[extra] - 1
            next_group += int(labels.max())

    con.register("_node_groups", pd.DataFrame({"idx": np.arange(n, dtype=np.int64), "grp": group}))
    anonymous = ", ".join(sql_string(ns) for ns in identity.anonymous_namespaces) or "''"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE identity_map AS
        WITH g AS (
            SELECT n.node, n.idx, ng.grp FROM id_nodes n JOIN _node_groups ng USING (idx)
        ), ids AS (
            SELECT grp, profile_id, (row_number() OVER (ORDER BY profile_id) - 1)::INTEGER AS profile_key
            FROM (SELECT grp, 'p_' || left(sha256(min(node)), 16) AS profile_id FROM g GROUP BY grp)
        )
        SELECT split_part(g.node, {sql_string(SEPARATOR)}, 1) AS namespace,
               substr(g.node, strpos(g.node, {sql_string(SEPARATOR)}) + 1) AS value,
               g.node, ids.profile_id, ids.profile_key
        FROM g JOIN ids USING (grp)
        ORDER BY profile_id, node
    """)
    con.unregister("_node_groups")
    con.execute("DROP TABLE id_rows")
    profiles, known = con.execute(f"""
        SELECT count(DISTINCT profile_id),
               count(DISTINCT profile_id) FILTER (WHERE namespace NOT IN ({anonymous}))
        FROM identity_map
    """).fetchone()
    return StitchResult(profiles=profiles, known_profiles=known, identities=n, collapses=collapses)


def attribute_events(con: duckdb.DuckDBPyConnection, identity: IdentityConfig) -> None:
    """The view ``stitched_events``: ``clean_events`` with ``profile_id`` and ``new_identities``.

    ``profile_id`` comes through each row's anchor identity. ``new_identities`` counts the
    identities seen on this event for the first time (ties broken by event_id), so that
    "identities known by as_of" is a plain sum over events before as_of: point in time.
    A view, not a copy: writing it out streams the join instead of holding the events twice.
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE identity_firsts AS
        SELECT first_event AS event_id, count(*)::INTEGER AS new_identities FROM (
            SELECT node, arg_min(event_id, (timestamp, event_id)) AS first_event
            FROM (
                SELECT timestamp, event_id, unnest({_node_list_sql(identity.namespaces)}) AS node
                FROM clean_events
            )
            GROUP BY node
        ) GROUP BY first_event
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW stitched_events AS
        SELECT m.profile_id, e.*, coalesce(f.new_identities, 0) AS new_identities, m.profile_key
        FROM clean_events e
        JOIN identity_map m ON m.node = {anchor_sql(identity.namespaces, "e")}
        LEFT JOIN identity_firsts f ON f.event_id = e.event_id
    """)


def build_profiles(con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_attributes: bool) -> None:
    """The temp table ``profiles``: one row per profile_id with identity facts and attributes.

    Consent is conservative when several attribute rows meet in one profile: any 'n' wins,
    then any 'y'; missing means not given.
    """
    anonymous = ", ".join(sql_string(ns) for ns in identity.anonymous_namespaces) or "''"
    per_namespace = ", ".join(
        f"count(*) FILTER (WHERE namespace = {sql_string(ns)}) AS {sql_ident(ns + '_count')}"
        for ns in identity.namespaces
    )
    attributes_sql, attribute_columns = "", ""
    if with_attributes:
        present = [r[0] for r in con.execute("DESCRIBE profile_attributes").fetchall()]
        namespaces = [n for n in identity.namespaces if n in present]
        others = [c for c in present if c not in namespaces and c not in (*CONSENT_COLUMNS, "_source_row")]
        # A profile's identities may carry conflicting flags: any 'n' wins, then any 'y'.
        consent = ", ".join(
            f"CASE WHEN bool_or(a.{c} = 'n') THEN 'n' WHEN bool_or(a.{c} = 'y') THEN 'y' END AS {c}"
            for c in CONSENT_COLUMNS
        )
        first_values = "".join(
            f", arg_min(a.{sql_ident(c)}, a._source_row) AS {sql_ident(c)}" for c in others
        )
        attributes_sql = f"""
            , attrs AS (
                SELECT m.profile_id, {consent}
                       {first_values}
                FROM profile_attributes a
                JOIN identity_map m ON m.node = {anchor_sql(namespaces, "a")}
                GROUP BY m.profile_id
            )"""
        attribute_columns = ", ".join(CONSENT_COLUMNS) + "".join(f", {sql_ident(c)}" for c in others)
    else:
        attribute_columns = ", ".join(f"CAST(NULL AS VARCHAR) AS {c}" for c in CONSENT_COLUMNS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE profiles AS
        WITH idf AS (
            SELECT profile_id, min(profile_key) AS profile_key,
                   bool_or(namespace NOT IN ({anonymous})) AS is_known,
                   count(*)::INTEGER AS identity_count,
                   {per_namespace}
            FROM identity_map GROUP BY profile_id
        ), activity AS (
            SELECT profile_id, min(timestamp) AS first_seen, max(timestamp) AS last_seen,
                   count(*) AS event_count
            FROM stitched_events GROUP BY profile_id
        ){attributes_sql}
        SELECT idf.*, activity.first_seen, activity.last_seen,
               coalesce(activity.event_count, 0) AS event_count,
               {attribute_columns}
        FROM idf LEFT JOIN activity USING (profile_id)
        {"LEFT JOIN attrs USING (profile_id)" if with_attributes else ""}
        ORDER BY profile_id
    """)
