"""The identity graph at an as-of date: events, profiles and outcomes as they were known then.

A profile at ``as_of`` is the identity graph built from the links observed before ``as_of``,
with the same guardrails as the whole history's (:mod:`propensity.features.identity.graph`).
Ingest stored every identity and link with the time it was first observed, and the few
components whose identities seen by some date were not yet the one profile they end up as
(``identity_unsettled``). Every other profile is *settled* at that date: its events before
``as_of`` are exactly its final profile's, so they pass through unchanged; only the events
of unsettled components are attributed again, through the graph rebuilt at ``as_of``.

Profile ids at ``as_of``: a profile that is exactly its final profile's identities seen by
then keeps the final ``profile_id``; any other (part of a final profile, or identities that
the guardrails separated later) is named like every profile, ``p_`` + a hash of its
smallest identity. No two profiles of one date share an id. Profile attributes (tier,
sign-up date, consent: the attributes file is today's view) stay with a settled profile; a
rebuilt one takes the rows whose first identity it holds, when that identity existed then.

Outcomes (labels) in ``[as_of, as_of + horizon)`` count for the profile, at ``as_of``, of the
event's first identity in namespace precedence that existed at ``as_of``; an outcome none
of whose identities existed then counts for nobody: the label is about the people the
snapshot knew, never about links that only a later event made (see :meth:`outcomes_sql`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from propensity.core.config import IdentityConfig
from propensity.features.contract import CONSENT_COLUMNS
from propensity.features.identity.graph import Grouping, group_identities
from propensity.features.identity.stitching import SEPARATOR, attributes_sql
from propensity.features.sql import DUCKDB, Dialect, sql_ident, sql_string


@dataclass(frozen=True)
class AsOfSources:
    """Relations (names of views) to build features at ``as_of`` from."""

    as_of: dt.date
    events: str  # events before as_of, profile_id as of as_of (no profile_key)
    profiles: str  # profile_id and the profile attributes as of as_of
    identity_map: str  # namespace, value, profile_id of the identities seen before as_of


@dataclass(frozen=True)
class Reattributed:
    """What stacked snapshots build apart, from :meth:`IdentityGraph.reattributed`.

    ``skip``: per as-of day (days since 1970), the final ``profile_key``\\ s whose identities
    were not one profile then, left out of the pass over the final profiles. ``events``: the
    events of those profiles, attributed as of each date, with ``profile_key`` a dense
    integer per (date, profile as of that date); ``keys`` maps it to ``profile_id`` and
    ``as_of_day``, ``key_days`` is each key's day (keys in date order), and ``profiles`` holds
    the attributes of each key's profile.
    """

    skip: dict[int, np.ndarray]
    events: str
    keys: str
    key_days: np.ndarray
    profiles: str

    @property
    def changed_profiles(self) -> dict[dt.date, int]:
        """Final profiles attributed again, per as-of date."""
        epoch = dt.date(1970, 1, 1)
        return {epoch + dt.timedelta(days=day): len(keys) for day, keys in self.skip.items()}


def _ts(as_of: dt.date) -> str:
    return f"TIMESTAMP '{as_of} 00:00:00'"


def _tag(as_of: dt.date) -> str:
    return as_of.strftime("%Y%m%d")


class GraphOutcomes:
    """Outcomes attributed through an identity graph seen as of dates, written once for both
    engines' graphs: each supplies ``identity``, ``dialect`` and :meth:`prepare`."""

    identity: IdentityConfig
    dialect: Dialect

    def prepare(self, as_ofs: list[dt.date]) -> None:
        """Build the graph at each date not built yet."""
        raise NotImplementedError

    def outcomes_sql(self, condition: str, horizon_days: int, as_ofs: list[dt.date], events: str) -> str:
        """Outcome events per (profile_id, as_of) with their largest ``revenue`` (``max_revenue``):
        :func:`outcomes_sql` over this graph, built at ``as_ofs`` first."""
        self.prepare(as_ofs)
        return outcomes_sql(self.identity, self.dialect, condition, horizon_days, as_ofs, events)


class IdentityGraph(GraphOutcomes):
    """The stored identity graph of one connection, rebuilt at as-of dates on demand.

    Reads ``identity_map`` (namespace, value, node_key, component, first_seen, profile_id,
    profile_key), ``identity_links``, ``identity_unsettled``, ``profiles`` and, when present,
    ``profile_attributes``, as ingest writes them (:func:`features.identity.stitch`). The
    graph of each date is built once per connection (the dates built are in the temp table
    ``identity_as_of_dates``), into the temp table ``identity_as_of`` (as_of, node_key,
    profile_id, final_key): the identities of unsettled components seen before the date,
    with their profile then; ``identity_as_of_changed`` (as_of, profile_key) lists the final
    profiles of those components.
    """

    dialect = DUCKDB

    def __init__(
        self, con: duckdb.DuckDBPyConnection, identity: IdentityConfig, events: str = "events"
    ) -> None:
        self.con, self.identity, self.events = con, identity, events
        con.execute("""
            CREATE TEMP TABLE IF NOT EXISTS identity_as_of (
                as_of DATE, node_key INTEGER, profile_id VARCHAR, final_key INTEGER)
        """)
        con.execute(
            "CREATE TEMP TABLE IF NOT EXISTS identity_as_of_changed (as_of DATE, profile_key INTEGER)"
        )
        con.execute("CREATE TEMP TABLE IF NOT EXISTS identity_as_of_dates (as_of DATE)")

    def forget(self) -> None:
        """Drop every date's graph built so far (the next use builds it again)."""
        for table in ("identity_as_of", "identity_as_of_changed", "identity_as_of_dates"):
            self.con.execute(f"DELETE FROM {table}")

    def prepare(self, as_ofs: list[dt.date]) -> None:
        """Build the graph at each date not built yet, all dates in one pass: the identities
        of every date are vertices of one graph (a date's vertices link only among themselves)."""
        built = {r[0] for r in self.con.execute("SELECT as_of FROM identity_as_of_dates").fetchall()}
        new = sorted(set(as_ofs) - built)
        if not new:
            return
        days = ", ".join(f"(DATE '{d}')" for d in new)
        self._unsettled_vertices(days)
        self._insert_profiles(self._group_vertices())
        self.con.execute(f"INSERT INTO identity_as_of_dates VALUES {days}")
        self.con.execute("DROP TABLE _vertices")
        self.con.execute("DROP TABLE _unsettled_nodes")

    def _unsettled_vertices(self, days: str) -> None:
        """``_unsettled_nodes``: the nodes of components unsettled at each new date (their
        profiles go to ``identity_as_of_changed``); ``_vertices``: those seen before the date,
        numbered in (date, node) order."""
        con = self.con
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _unsettled_nodes AS
            WITH components AS (
                SELECT DISTINCT d.as_of, u.component
                FROM identity_unsettled u JOIN (VALUES {days}) AS d(as_of)
                  ON (u.after IS NULL OR u.after < d.as_of) AND d.as_of <= u.until
            )
            SELECT c.as_of, m.node_key, m.namespace, m.profile_key, m.first_seen
            FROM components c JOIN identity_map m USING (component)
        """)
        con.execute(
            "INSERT INTO identity_as_of_changed SELECT DISTINCT as_of, profile_key FROM _unsettled_nodes"
        )
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _vertices AS
            SELECT (row_number() OVER (ORDER BY as_of, node_key) - 1)::BIGINT AS vertex, *
            FROM _unsettled_nodes WHERE first_seen IS NULL OR first_seen < as_of
        """)

    def _group_vertices(self) -> Grouping:
        """The vertices grouped into profiles by the links seen before their date."""
        con = self.con
        vertices = con.execute("SELECT namespace, node_key FROM _vertices ORDER BY vertex").fetchnumpy()
        # A link is never older than its identities, so both ends are vertices of its date.
        links = con.execute("""
            SELECT va.vertex AS a, vb.vertex AS b
            FROM identity_links l
            JOIN _vertices va ON va.node_key = l.a
            JOIN _vertices vb ON vb.node_key = l.b AND vb.as_of = va.as_of
            WHERE l.first_seen IS NULL OR l.first_seen < va.as_of
        """).fetchnumpy()
        return group_identities(
            np.asarray(vertices["namespace"], dtype=object),
            np.asarray(links["a"], dtype=np.int64),
            np.asarray(links["b"], dtype=np.int64),
            self.identity,
            names=np.asarray(vertices["node_key"], dtype=np.int64),
        )

    def _insert_profiles(self, grouping: Grouping) -> None:
        """Each vertex's profile_id at its date into ``identity_as_of``: the final profile's id
        when the group is exactly its final profile's nodes seen so far, else a hash of the
        group's smallest identity."""
        con = self.con
        con.register(
            "_vertex_groups", pa.table({"vertex": np.arange(len(grouping.group)), "grp": grouping.group})
        )
        # Node keys follow node order, so a group's smallest key is its smallest identity.
        sep = sql_string(SEPARATOR)
        con.execute(f"""
            INSERT INTO identity_as_of
            WITH n AS (
                SELECT v.as_of, v.node_key, v.profile_key, g.grp
                FROM _vertices v JOIN _vertex_groups g USING (vertex)
            ), groups AS (
                SELECT grp, any_value(as_of) AS as_of, min(node_key) AS smallest, count(*) AS size,
                       min(profile_key) AS some_final, max(profile_key) AS other_final
                FROM n GROUP BY grp
            ), seen AS (SELECT as_of, profile_key, count(*) AS size FROM n GROUP BY as_of, profile_key),
            named AS (
                SELECT g.grp,
                       CASE WHEN g.some_final = g.other_final AND g.size = s.size THEN m.profile_id
                            ELSE 'p_' || left(sha256(m.namespace || {sep} || m.value), 16) END AS profile_id
                FROM groups g
                JOIN seen s ON s.as_of = g.as_of AND s.profile_key = g.some_final
                JOIN identity_map m ON m.node_key = g.smallest
            )
            SELECT n.as_of, n.node_key, named.profile_id, n.profile_key
            FROM n JOIN named USING (grp)
            ORDER BY n.as_of, n.node_key
        """)
        con.unregister("_vertex_groups")

    def changed_keys(self, as_of: dt.date) -> np.ndarray:
        """Final ``profile_key``\\ s whose events are attributed again at ``as_of``."""
        self.prepare([as_of])
        rows = self.con.execute(
            f"SELECT profile_key FROM identity_as_of_changed WHERE as_of = DATE '{as_of}' ORDER BY 1"
        ).fetchnumpy()
        return np.asarray(rows["profile_key"], dtype=np.int64)

    def _profiles_view(self, as_of: dt.date) -> str:
        """Profile attributes at ``as_of``: settled profiles' rows as they are, and the
        attributes of the profiles rebuilt then, from the attribute rows whose first identity
        they hold."""
        con, name = self.con, f"profiles_as_of_{_tag(as_of)}"
        nodes = f"(SELECT node_key, profile_id FROM identity_as_of WHERE as_of = DATE '{as_of}')"
        try:
            rebuilt, columns = attributes_sql(con, self.identity, nodes)
        except duckdb.CatalogException:  # no profile-attributes file: consent not given
            columns = list(CONSENT_COLUMNS)
            rebuilt = f"SELECT DISTINCT profile_id, {', '.join(f'NULL AS {c}' for c in columns)} FROM {nodes}"
        listed = ", ".join(sql_ident(c) for c in columns)
        con.execute(f"""
            CREATE OR REPLACE TEMP VIEW {name} AS
            SELECT profile_id, {listed} FROM profiles
            WHERE profile_key NOT IN (
                SELECT profile_key FROM identity_as_of_changed WHERE as_of = DATE '{as_of}')
            UNION ALL BY NAME
            SELECT * FROM ({rebuilt})
        """)
        return name

    def sources(self, as_of: dt.date) -> AsOfSources:
        """Views of the events, profiles and identities at ``as_of`` (built once per date)."""
        self.prepare([as_of])
        tag, d = _tag(as_of), _ts(as_of)
        columns = [r[0] for r in self.con.execute(f"DESCRIBE {self.events}").fetchall()]
        events_sql = events_as_of_sql(as_of, d, self.events, columns, DUCKDB)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW events_as_of_{tag} AS {events_sql}")
        identities = f"identity_map_as_of_{tag}"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {identities} AS {identities_as_of_sql(as_of, d)}")
        return AsOfSources(as_of, f"events_as_of_{tag}", self._profiles_view(as_of), identities)

    def reattributed(
        self, as_ofs: list[dt.date], events: str, lookback_days: int | None = None
    ) -> Reattributed:
        """For stacked snapshots: the final profiles to leave out at each date, and the events
        of the profiles the graph at that date makes of them instead (those within
        ``lookback_days`` before it, when given), keyed by a dense integer per (date, profile).
        """
        self.prepare(as_ofs)
        con, epoch = self.con, dt.date(1970, 1, 1)
        days = ", ".join(f"DATE '{d}'" for d in sorted(set(as_ofs)))
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE reattributed_keys AS
            SELECT (row_number() OVER (ORDER BY as_of, profile_id) - 1)::INTEGER AS profile_key,
                   as_of, date_diff('day', DATE '1970-01-01', as_of)::INTEGER AS as_of_day, profile_id
            FROM (SELECT DISTINCT as_of, profile_id FROM identity_as_of WHERE as_of IN ({days}))
        """)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE reattributed_nodes AS
            SELECT m.as_of, m.node_key, k.profile_key
            FROM identity_as_of m JOIN reattributed_keys k USING (as_of, profile_id)
        """)
        # An event before a date whose anchor is a node of that date's graph belongs to a
        # changed profile: the anchor's component is unsettled then.
        oldest = f"AND e.timestamp >= n.as_of - INTERVAL {int(lookback_days)} DAY" if lookback_days else ""
        con.execute(f"""
            CREATE OR REPLACE TEMP VIEW reattributed_events AS
            SELECT n.profile_key, e.* EXCLUDE (profile_key, profile_id)
            FROM {events} e JOIN reattributed_nodes n ON n.node_key = e.anchor_key
            WHERE e.timestamp < n.as_of {oldest}
        """)
        # Attributes grouped by key: the nodes carry their (date, profile)'s key as "profile_id".
        nodes = (
            "(SELECT m.node_key, k.profile_key AS profile_id "
            "FROM identity_as_of m JOIN reattributed_keys k USING (as_of, profile_id))"
        )
        try:
            attributes, _ = attributes_sql(con, self.identity, nodes)
            profiles = f"SELECT profile_id AS profile_key, * EXCLUDE (profile_id) FROM ({attributes})"
        except duckdb.CatalogException:  # no profile-attributes file: consent not given
            profiles = "SELECT profile_key, " + ", ".join(f"NULL::VARCHAR AS {c}" for c in CONSENT_COLUMNS)
            profiles += " FROM reattributed_keys"
        con.execute(f"CREATE OR REPLACE TEMP VIEW reattributed_profiles AS {profiles}")
        skip = {}
        for as_of in sorted(set(as_ofs)):
            keys = self.changed_keys(as_of)
            if len(keys):
                skip[(as_of - epoch).days] = keys
        key_days = con.execute("SELECT as_of_day FROM reattributed_keys ORDER BY profile_key").fetchnumpy()
        return Reattributed(
            skip=skip,
            events="reattributed_events",
            keys="reattributed_keys",
            key_days=np.asarray(key_days["as_of_day"], dtype=np.int64),
            profiles="reattributed_profiles",
        )


def events_as_of_sql(
    as_of: dt.date, timestamp: str, events: str, columns: list[str], dialect: Dialect
) -> str:
    """The events of ``events`` before ``as_of`` (``timestamp``: the literal of its midnight),
    each with its profile_id then, over ``identity_as_of`` and ``identity_as_of_changed``
    (built for ``as_of``); either engine's SQL. A settled profile's events pass through
    unchanged; a changed profile's are attributed again through the graph then (an event
    whose anchor is a node of that graph belongs to a changed profile). ``columns``: the
    events' columns in order (``profile_key`` is left out). Both joined sides are small: the
    hints broadcast them on Spark (DuckDB reads them as comments)."""
    kept = [c for c in columns if c != "profile_key"]
    settled = ", ".join(f"e.{dialect.ident(c)}" for c in kept)
    again = ", ".join("m.profile_id" if c == "profile_id" else f"e.{dialect.ident(c)}" for c in kept)
    return f"""
        SELECT /*+ BROADCAST(c) */ {settled} FROM {events} e
        ANTI JOIN (SELECT profile_key FROM identity_as_of_changed WHERE as_of = DATE '{as_of}') c
          ON c.profile_key = e.profile_key
        WHERE e.timestamp < {timestamp}
        UNION ALL
        SELECT /*+ BROADCAST(m) */ {again} FROM {events} e
        JOIN (SELECT node_key, profile_id FROM identity_as_of WHERE as_of = DATE '{as_of}') m
          ON m.node_key = e.anchor_key
        WHERE e.timestamp < {timestamp}
    """


def identities_as_of_sql(as_of: dt.date, timestamp: str) -> str:
    """Every identity seen before ``as_of`` (``timestamp``: the literal of its midnight) with its
    profile_id then: the rebuilt profile's, else the final one. Either engine's SQL."""
    return f"""
        SELECT m.namespace, m.value, coalesce(a.profile_id, m.profile_id) AS profile_id
        FROM identity_map m
        LEFT JOIN identity_as_of a ON a.as_of = DATE '{as_of}' AND a.node_key = m.node_key
        WHERE m.first_seen IS NULL OR m.first_seen < {timestamp}
    """


def _outcome_spellings(namespaces: list[str], dialect: Dialect) -> dict[str, str]:
    """What differs between the engines in :func:`outcomes_sql`: the outcome rows' id, the
    candidates (one row per outcome and identity: DuckDB unions one scan per namespace, Spark
    explodes an array of structs in a single pass, its row id drawn once per outcome), the
    timestamp type, and two aggregate names."""
    if dialect.name == "spark":
        identities = ", ".join(
            f"named_struct('rank', {rank}, 'namespace', {sql_string(ns)}, 'value', {dialect.ident(ns)})"
            for rank, ns in enumerate(namespaces)
        )
        return {
            "row": "monotonically_increasing_id()",
            "columns": f"coalesce(e.order_revenue, e.revenue) AS revenue, array({identities}) AS identities",
            "candidates": "SELECT * FROM (SELECT outcome_row, as_of, revenue, inline(identities) "
            "FROM outcomes) WHERE value IS NOT NULL",
            "timestamp": "TIMESTAMP_NTZ",
            "any": "first",
            "arg_min": "min_by",
        }
    candidates = " UNION ALL ".join(
        f"SELECT outcome_row, as_of, coalesce(order_revenue, revenue) AS revenue, {rank} AS rank, "
        f"{sql_string(ns)} AS namespace, "
        f"{dialect.ident(ns)} AS value FROM outcomes WHERE {dialect.ident(ns)} IS NOT NULL"
        for rank, ns in enumerate(namespaces)
    )
    return {
        "row": "row_number() OVER ()",
        "columns": "e.*",
        "candidates": candidates,
        "timestamp": "TIMESTAMP",
        "any": "any_value",
        "arg_min": "arg_min",
    }


def outcomes_sql(
    identity: IdentityConfig,
    dialect: Dialect,
    condition: str,
    horizon_days: int,
    as_ofs: list[dt.date],
    events: str,
) -> str:
    """Outcome events per (profile_id, as_of) with their largest ``revenue`` (``max_revenue``; a
    purchase line's order value when it has one), over ``identity_map`` and ``identity_as_of``
    (built for ``as_ofs``), on either engine.

    An event of ``events`` (aliased ``e``) matching ``condition`` in ``[as_of, as_of +
    horizon_days)`` counts for the profile, at ``as_of``, of its first identity in
    namespace precedence seen before ``as_of``; if it has none, for nobody.
    """
    days = ", ".join(f"(DATE '{d}')" for d in sorted(set(as_ofs)))
    event_day, as_of_day = dialect.day("e.timestamp"), dialect.day("s.as_of")
    say = _outcome_spellings(list(identity.namespaces), dialect)
    return f"""
        WITH outcomes AS (
            SELECT {say["row"]} AS outcome_row, s.as_of, {say["columns"]}
            FROM {events} e
            JOIN (VALUES {days}) AS s(as_of)
              ON {event_day} >= {as_of_day} AND {event_day} < {as_of_day} + {int(horizon_days)}
            WHERE {condition}
        ), candidates AS ({say["candidates"]}),
        placed AS (
            SELECT c.outcome_row, c.as_of, c.revenue, c.rank,
                   coalesce(a.profile_id, m.profile_id) AS profile_id
            FROM candidates c
            JOIN identity_map m ON m.namespace = c.namespace AND m.value = c.value
            LEFT JOIN identity_as_of a ON a.as_of = c.as_of AND a.node_key = m.node_key
            WHERE m.first_seen IS NULL OR m.first_seen < CAST(c.as_of AS {say["timestamp"]})
        ), attributed AS (
            SELECT outcome_row, as_of, {say["any"]}(revenue) AS revenue,
                   {say["arg_min"]}(profile_id, rank) AS profile_id
            FROM placed GROUP BY outcome_row, as_of
        )
        SELECT profile_id, as_of, max(revenue) AS max_revenue FROM attributed GROUP BY profile_id, as_of
    """
