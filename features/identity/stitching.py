"""Identity stitching: identities seen together become one profile, with collapse guardrails.

Nodes are ``namespace:value`` strings; a link joins identities that appear on the same
event row or the same profile-attributes row. Connected components are profiles, except
where a component would collapse distinct people:

* it holds two values of a *unique* namespace (two ``crm_id``\\ s), e.g. a shared family
  tablet or a store kiosk: each identity then joins its nearest unique-namespace anchor,
  and identities equally near two anchors (the shared device) become profiles of their own;
* it holds more identities than ``max_identities_per_profile`` (test accounts signed in on
  hundreds of devices): its anonymous identities become profiles of their own
  (the graph algorithms live in :mod:`propensity.features.identity.graph`).

Each such split is reported. ``profile_id`` is a hash of the component's smallest identity,
so the same inputs always give the same ids.

This is the graph of the whole history. Every identity and link keeps the time it was
first observed (an event's timestamp; a profile-attributes row's ``signup_date``, or "from
the start" without one), so that the graph at any as-of date can be rebuilt from the links
observed before it (:mod:`propensity.features.identity.as_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from propensity.core.config import IdentityConfig
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.graph import (
    ALWAYS,
    Collapse,
    Grouping,
    Unsettled,
    group_identities,
    unsettled_intervals,
)
from propensity.features.identity.orders import ORDER_ID, order_columns_sql, order_firsts_sql
from propensity.features.sql import sql_ident, sql_string

SEPARATOR = ":"


@dataclass
class StitchResult:
    """Counts of the stitched identity graph and every guardrail split."""

    profiles: int
    known_profiles: int
    identities: int
    collapses: list[Collapse] = field(default_factory=list)
    # Final profiles whose identities were, at some earlier time, not yet that one profile.
    unsettled_profiles: int = 0


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


def attribute_link_time_sql(columns: set[str]) -> str:
    """When the identities of a profile-attributes row count as linked: from midnight of its
    ``signup_date`` (when tier and tenure start counting too), else from the start."""
    if "signup_date" not in columns:
        return "CAST(NULL AS TIMESTAMP)"
    return "TRY_CAST(signup_date AS TIMESTAMP)"


def _micros(timestamp_sql: str) -> str:
    # "From the start" (NULL) becomes ALWAYS so that min() keeps it first.
    return f"coalesce(epoch_us({timestamp_sql}), {ALWAYS})"


def _timestamp(micros_sql: str) -> str:
    return f"CASE WHEN {micros_sql} = {ALWAYS} THEN NULL ELSE make_timestamp({micros_sql}) END"


def stitch(con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_profiles: bool) -> StitchResult:
    """Build the temp tables of the identity graph from ``clean_events`` (and, when
    ``with_profiles``, ``profile_attributes``).

    * ``identity_map``: namespace, value, node, ``node_key`` (dense, in node order),
      ``component`` (connected component before guardrail splits), ``first_seen`` (the first
      event or profile row holding it; NULL: known from the start), profile_id, profile_key;
    * ``identity_links``: node keys ``a < b`` seen together, and when first (NULL: from the start);
    * ``identity_unsettled``: components and as-of times ``after < as_of <= until`` (``after``
      NULL: from the start) at which their identities seen so far were not yet the profiles
      the whole history makes of them (:func:`features.identity.graph.unsettled_intervals`).

    ``profile_key`` numbers the profiles 0, 1, ... in ``profile_id`` order: a compact key for
    this ingest's group-bys and joins, not an identifier to keep (it shifts as profiles come).
    """
    _identity_nodes(con, identity, with_profiles)
    # Each row links its first identity to the others (a star: the same components).
    links = con.execute("""
        SELECT least(a.idx, b.idx) AS a, greatest(a.idx, b.idx) AS b, min(e.t) AS t FROM (
            SELECT ids[1] AS a, unnest(ids[2:]) AS b, t FROM id_rows WHERE len(ids) > 1
        ) e JOIN id_nodes a ON e.a = a.node JOIN id_nodes b ON e.b = b.node
        GROUP BY ALL ORDER BY a, b
    """).fetchnumpy()
    node_table = con.execute("SELECT namespace, t FROM id_nodes ORDER BY idx").fetchnumpy()
    node_namespace = np.asarray(node_table["namespace"], dtype=object)
    src, dst = (np.asarray(links[c], dtype=np.int64) for c in ("a", "b"))
    link_time = np.asarray(links["t"], dtype=np.int64)
    grouping = group_identities(node_namespace, src, dst, identity)
    unsettled = unsettled_intervals(
        grouping, np.asarray(node_table["t"], dtype=np.int64), src, dst, link_time
    )
    _write_identity_map(con, grouping)
    _write_links_and_unsettled(con, src, dst, link_time, unsettled)
    con.execute("DROP TABLE id_rows")
    con.execute("DROP TABLE id_nodes")
    return _stitch_result(con, identity, len(node_namespace), grouping.collapses)


def stitch_events(
    con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_profiles: bool
) -> StitchResult:
    """Staged events (``clean_events``, and ``profile_attributes`` when ``with_profiles``) made
    profiles, in the order each step needs the last: the identity graph (:func:`stitch`), the
    events attributed to its profiles (:func:`attribute_events`), the attribute rows anchored
    (:func:`anchor_attributes`) and ``profiles`` built (:func:`build_profiles`)."""
    result = stitch(con, identity, with_profiles)
    attribute_events(con, identity)
    if with_profiles:
        anchor_attributes(con, identity)
    build_profiles(con, identity, with_profiles)
    return result


def _identity_nodes(con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_profiles: bool) -> None:
    """The temp tables ``id_rows`` (each distinct identity tuple of the events and profile
    rows, first seen when) and ``id_nodes`` (each identity, numbered in order, first seen when)."""
    namespaces = identity.namespaces
    columns = ", ".join(sql_ident(n) for n in namespaces)
    # Distinct identity tuples first: millions of events share a few hundred thousand.
    sources = [
        f"SELECT {_node_list_sql(namespaces)} AS ids, t FROM ("
        f"SELECT {columns}, {_micros('min(timestamp)')} AS t FROM clean_events GROUP BY ALL)"
    ]
    if with_profiles:
        present = {r[0] for r in con.execute("DESCRIBE profile_attributes").fetchall()}
        keyed = [n for n in namespaces if n in present]
        sources.append(
            f"SELECT {_node_list_sql(keyed)} AS ids, {_micros(attribute_link_time_sql(present))} AS t "
            f"FROM profile_attributes"
        )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_rows AS
        SELECT ids, min(t) AS t FROM ({" UNION ALL ".join(sources)}) GROUP BY ids
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE id_nodes AS
        SELECT node, (row_number() OVER (ORDER BY node) - 1)::BIGINT AS idx,
               split_part(node, {sql_string(SEPARATOR)}, 1) AS namespace, t
        FROM (SELECT unnest(ids) AS node, min(t) AS t FROM id_rows GROUP BY node)
        ORDER BY idx
    """)


def _write_identity_map(con: duckdb.DuckDBPyConnection, grouping: Grouping) -> None:
    """``identity_map``: every node with its component, its group's profile_id (a hash of the
    group's smallest node) and profile_key (profiles numbered in profile_id order)."""
    con.register(
        "_node_groups",
        pd.DataFrame(
            {
                "idx": np.arange(len(grouping.group), dtype=np.int64),
                "grp": grouping.group,
                "component": grouping.component,
            }
        ),
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE identity_map AS
        WITH g AS (
            SELECT n.node, n.idx, n.namespace, n.t, ng.grp, ng.component
            FROM id_nodes n JOIN _node_groups ng USING (idx)
        ), ids AS (
            SELECT grp, profile_id, (row_number() OVER (ORDER BY profile_id) - 1)::INTEGER AS profile_key
            FROM (SELECT grp, 'p_' || left(sha256(min(node)), 16) AS profile_id FROM g GROUP BY grp)
        )
        SELECT g.namespace, substr(g.node, strpos(g.node, {sql_string(SEPARATOR)}) + 1) AS value,
               g.node, g.idx::INTEGER AS node_key, g.component::INTEGER AS component,
               {_timestamp("g.t")} AS first_seen, ids.profile_id, ids.profile_key
        FROM g JOIN ids USING (grp)
        ORDER BY profile_id, node
    """)
    con.unregister("_node_groups")


def _write_links_and_unsettled(
    con: duckdb.DuckDBPyConnection,
    src: np.ndarray,
    dst: np.ndarray,
    link_time: np.ndarray,
    unsettled: Unsettled,
) -> None:
    """``identity_links`` (node keys seen together, first when) and ``identity_unsettled``."""
    con.register("_links", pd.DataFrame({"a": src, "b": dst, "t": link_time}))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE identity_links AS
        SELECT a::INTEGER AS a, b::INTEGER AS b, {_timestamp("t")} AS first_seen FROM _links ORDER BY a, b
    """)
    con.unregister("_links")
    con.register(
        "_unsettled",
        pd.DataFrame({"component": unsettled.component, "after": unsettled.after, "until": unsettled.until}),
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE identity_unsettled AS
        SELECT component::INTEGER AS component, {_timestamp("after")} AS after,
               make_timestamp(until) AS until
        FROM _unsettled ORDER BY component, after NULLS FIRST
    """)
    con.unregister("_unsettled")


def _stitch_result(
    con: duckdb.DuckDBPyConnection, identity: IdentityConfig, identities: int, collapses: list[Collapse]
) -> StitchResult:
    """Profiles, known profiles and unsettled profiles of the written ``identity_map``."""
    anonymous = ", ".join(sql_string(ns) for ns in identity.anonymous_namespaces) or "''"
    profiles, known, unsettled_profiles = con.execute(f"""
        SELECT count(DISTINCT profile_id),
               count(DISTINCT profile_id) FILTER (WHERE namespace NOT IN ({anonymous})),
               count(DISTINCT profile_id) FILTER (
                   WHERE component IN (SELECT component FROM identity_unsettled))
        FROM identity_map
    """).fetchone()
    return StitchResult(
        profiles=profiles,
        known_profiles=known,
        identities=identities,
        collapses=collapses,
        unsettled_profiles=unsettled_profiles,
    )


def attribute_events(con: duckdb.DuckDBPyConnection, identity: IdentityConfig) -> None:
    """The view ``stitched_events``: ``clean_events`` with ``profile_id``, ``profile_key``,
    ``new_identities`` and ``anchor_key``.

    ``profile_id`` comes through each row's anchor identity, whose ``node_key`` is
    ``anchor_key`` (through which the graph at an as-of date attributes the event again).
    ``order_lines`` / ``order_revenue`` make the lines of one order one order
    (:mod:`propensity.features.identity.orders`). ``new_identities`` counts the identities seen
    on this event for the first time (ties
    broken by event_id), so that "identities known by as_of" is a plain sum over events
    before as_of: point in time. A view, not a copy: writing it out streams the join instead
    of holding the events twice.
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
    has_order_id = ORDER_ID in {r[0] for r in con.execute("DESCRIBE clean_events").fetchall()}
    if has_order_id:
        con.execute(f"CREATE OR REPLACE TEMP TABLE order_firsts AS {order_firsts_sql()}")
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW stitched_events AS
        SELECT m.profile_id, e.*, coalesce(f.new_identities, 0) AS new_identities, m.profile_key,
               m.node_key AS anchor_key, {order_columns_sql(has_order_id)}
        FROM clean_events e
        JOIN identity_map m ON m.node = {anchor_sql(identity.namespaces, "e")}
        LEFT JOIN identity_firsts f ON f.event_id = e.event_id
        {"LEFT JOIN order_firsts o ON o.event_id = e.event_id" if has_order_id else ""}
    """)


def anchor_attributes(con: duckdb.DuckDBPyConnection, identity: IdentityConfig) -> None:
    """Give each ``profile_attributes`` row its ``anchor_key``: the ``node_key`` of its first
    identity in precedence order, through which it belongs to a profile."""
    present = {r[0] for r in con.execute("DESCRIBE profile_attributes").fetchall()}
    namespaces = [n for n in identity.namespaces if n in present]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE profile_attributes AS
        SELECT a.*, m.node_key AS anchor_key
        FROM profile_attributes a JOIN identity_map m ON m.node = {anchor_sql(namespaces, "a")}
        ORDER BY a._source_row
    """)


def attributes_sql(
    con: duckdb.DuckDBPyConnection, identity: IdentityConfig, nodes: str = "identity_map"
) -> tuple[str, list[str]]:
    """Attributes per profile: SQL giving ``profile_id`` and the attribute columns, and their
    names, from ``profile_attributes`` rows (with their ``anchor_key``,
    :func:`anchor_attributes`) attributed through ``nodes`` (node_key, profile_id).

    A row belongs to the profile of its first identity in precedence order. Consent is
    conservative when several rows meet in one profile: any 'n' wins, then any 'y'; missing
    means not given. Other attributes come from the first row (in file order) that has them.
    """
    present = [r[0] for r in con.execute("DESCRIBE profile_attributes").fetchall()]
    namespaces = [n for n in identity.namespaces if n in present]
    bookkeeping = (*CONSENT_COLUMNS, "_source_row", "anchor_key")
    others = [c for c in present if c not in namespaces and c not in bookkeeping]
    consent = ", ".join(
        f"CASE WHEN bool_or(a.{c} = 'n') THEN 'n' WHEN bool_or(a.{c} = 'y') THEN 'y' END AS {c}"
        for c in CONSENT_COLUMNS
    )
    first_values = "".join(f", arg_min(a.{sql_ident(c)}, a._source_row) AS {sql_ident(c)}" for c in others)
    sql = f"""
        SELECT m.profile_id, {consent} {first_values}
        FROM profile_attributes a JOIN {nodes} m ON m.node_key = a.anchor_key
        GROUP BY m.profile_id
    """
    return sql, [*CONSENT_COLUMNS, *others]


def build_profiles(con: duckdb.DuckDBPyConnection, identity: IdentityConfig, with_attributes: bool) -> None:
    """The temp table ``profiles``: one row per profile_id with identity facts and attributes
    (:func:`attributes_sql`; without an attributes file, consent columns of NULL)."""
    anonymous = ", ".join(sql_string(ns) for ns in identity.anonymous_namespaces) or "''"
    per_namespace = ", ".join(
        f"count(*) FILTER (WHERE namespace = {sql_string(ns)}) AS {sql_ident(ns + '_count')}"
        for ns in identity.namespaces
    )
    attributes_cte = ""
    if with_attributes:
        sql, names = attributes_sql(con, identity)
        attributes_cte = f", attrs AS ({sql})"
        attribute_columns = ", ".join(sql_ident(c) for c in names)
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
        ){attributes_cte}
        SELECT idf.*, activity.first_seen, activity.last_seen,
               coalesce(activity.event_count, 0) AS event_count,
               {attribute_columns}
        FROM idf LEFT JOIN activity USING (profile_id)
        {"LEFT JOIN attrs USING (profile_id)" if with_attributes else ""}
        ORDER BY profile_id
    """)
