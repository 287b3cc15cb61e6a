"""The funnel query, written once for both engines: one row per unit with when it reached each step.

**The query.** A unit (a profile, or one session of a profile) completes step ``k`` at an
event matching step ``k`` when some chain ``step 0 -> ... -> step k`` of its events, each
strictly later than the one before, fits in the funnel window (first to last step) and in
each step's own time limit after the previous step. Among chains ending at an event, the one
that started latest is the best for everything that follows (it leaves the most window), so
one number per event and step is enough: ``s_k`` = the latest start of a chain ending there.
``s_k`` is the largest ``s_{k-1}`` of the unit's earlier step-(k-1) events within
``min(limit, window)``, kept when the start is within the window (:func:`_ordered_steps`: a
join of step k's events to the step before's chains on DuckDB, a running max over a window on
Spark). One pass per step over that step's events only, so 32 or 64 steps grow the query
linearly, never as a join of all steps. Exclusion events split a unit's events into epochs
(a running count); the steps they guard only chain inside one epoch. ``strict`` chains only
consecutive events of the unit; ``any`` order counts the distinct steps done within a window
ending at each event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from propensity.core.errors import UserError
from propensity.features.journeys.spec import Exclusion, Step
from propensity.features.sql import Dialect

MODES = ("ordered", "strict", "any")
MICROS = 1_000_000


@dataclass(frozen=True)
class FunnelSpec:
    """What a funnel asks: steps in order, the window, the mode, exclusions and sessions."""

    steps: tuple[Step, ...]
    window_seconds: int
    mode: str = "ordered"
    exclusions: tuple[Exclusion, ...] = ()
    session_gap_seconds: int | None = None  # None: count per profile

    def __post_init__(self) -> None:
        if len(self.steps) < 2:
            raise UserError(f"funnel: expected at least two steps, got {len(self.steps)}")
        if self.mode not in MODES:
            raise UserError(f"funnel mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.window_seconds <= 0:
            raise UserError("funnel window: expected a positive duration")
        if self.mode == "any" and any(s.limit_seconds for s in self.steps):
            raise UserError("funnel: step time limits need an order; the 'any' mode has none")
        if self.mode == "strict" and self.exclusions:
            raise UserError(
                "funnel: the strict mode allows no event between steps, so exclusions add nothing"
            )
        if self.steps[0].limit_seconds is not None:
            raise UserError(
                f"step '{self.steps[0].name}': the first step has no previous step to be timed from"
            )

    def limit_micros(self, k: int) -> int:
        """How far before step ``k`` the previous step may be: its limit, never past the window."""
        limit = self.steps[k].limit_seconds
        return MICROS * min(limit if limit is not None else self.window_seconds, self.window_seconds)


def _conditions(spec: FunnelSpec, dialect: Dialect, columns: set[str] | None) -> tuple[list[str], list[str]]:
    steps = [s.condition(columns, dialect.quote) for s in spec.steps]
    excluded = [x.step.condition(columns, dialect.quote) for x in spec.exclusions]
    return steps, excluded


def funnel_units_sql(
    spec: FunnelSpec,
    events: str,
    end: dt.datetime,
    dialect: Dialect,
    since: dt.datetime | None = None,
    columns: set[str] | None = None,
    first_channel: bool = True,
) -> str:
    """One row per unit that reached the first step: ``profile_id``, ``session``, ``t_0`` ..
    ``t_{n-1}`` (microseconds when the unit first reached each step, NULL if never),
    ``open_chain`` (1 when a chain can still advance at ``end``), ``session_end`` and
    ``first_channel`` (the channel of the first step's event, the smallest on a tie; NULL
    without ``first_channel``, which then never reads the column)."""
    end_us = f"{dialect.micros(dialect.timestamp(end))}"
    steps, excluded = _conditions(spec, dialect, columns)
    # Strict mode orders ties by type and event id; the other modes never need the id.
    has_id = columns is None or "event_id" in columns
    # Without sessions or strict order only the events of a step or an exclusion matter: the
    # scan filters them (on the column values, before the flags are computed).
    narrow = spec.mode != "strict" and not spec.session_gap_seconds
    ctes = [_base_cte(spec, events, end, since, dialect, steps, excluded, has_id, narrow, first_channel)]
    _event_ctes(spec, ctes, end_us, narrow, len(excluded))
    if spec.mode == "ordered":
        return _ordered_sql(spec, ctes, dialect, end_us, len(excluded), first_channel)
    if spec.mode == "any":
        reached, open_row, first = _any_levels(spec, ctes, end_us, len(excluded))
    else:
        reached, open_row, first = _strict_levels(spec, ctes, end_us, has_id)
    return _units_sql(spec, ctes, dialect, reached, open_row, first)


def _base_cte(
    spec: FunnelSpec,
    events: str,
    end: dt.datetime,
    since: dt.datetime | None,
    dialect: Dialect,
    steps: list[str],
    excluded: list[str],
    has_id: bool,
    narrow: bool,
    first_channel: bool,
) -> str:
    """``base``: the events before ``end`` (and from ``since``), a flag per step and exclusion."""
    q = dialect.ident
    flags = [f"{c} AS m{i}" for i, c in enumerate(steps)] + [f"{c} AS x{j}" for j, c in enumerate(excluded)]
    where = f"{q('timestamp')} < {dialect.timestamp(end)}"
    if since is not None:
        where += f" AND {q('timestamp')} >= {dialect.timestamp(since)}"
    tiebreak = f", {q('event_id')} AS _tb" if spec.mode == "strict" and has_id else ""
    prefilter = " AND (" + " OR ".join(steps + excluded) + ")" if narrow else ""
    channel = q("channel") if first_channel else f"CAST(NULL AS {dialect.string_type})"
    event_type = f", {q('event_type')} AS et" if spec.mode == "strict" else ""
    return (
        f"base AS (SELECT {q('profile_id')} AS pid, {dialect.micros(q('timestamp'))} AS t, "
        f"{channel} AS ch{event_type}{tiebreak}, "
        + ", ".join(flags)
        + f" FROM {events} WHERE {where} AND {q('profile_id')} IS NOT NULL{prefilter})"
    )


def _event_ctes(spec: FunnelSpec, ctes: list[str], end_us: str, narrow: bool, exclusions: int) -> None:
    """Appends the sessions (when asked) and ``ev``: the unit's events with their exclusion epochs."""
    n = len(spec.steps)
    # Sessions need every event (a gap is a gap whatever happens in it); then only the
    # events that match a step or an exclusion go on, unless strict mode needs them all.
    if spec.session_gap_seconds:
        gap = spec.session_gap_seconds * MICROS
        ctes.append(
            "gaps AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY pid ORDER BY t) > "
            f"{gap} THEN 1 ELSE 0 END AS brk FROM base)"
        )
        ctes.append(
            "sess AS (SELECT *, sum(brk) OVER (PARTITION BY pid ORDER BY t ROWS BETWEEN UNBOUNDED "
            "PRECEDING AND CURRENT ROW) AS sn FROM gaps)"
        )
        ctes.append("sessioned AS (SELECT *, max(t) OVER (PARTITION BY pid, sn) AS se FROM sess)")
        source = "sessioned"
    elif spec.mode == "ordered":
        source = "base"  # one unit per profile: no session columns
    else:
        ctes.append(
            f"sessioned AS (SELECT *, CAST(0 AS BIGINT) AS sn, CAST({end_us} AS BIGINT) AS se FROM base)"
        )
        source = "sessioned"
    unit = "pid" if source == "base" else "pid, sn"
    matched = " OR ".join([f"m{i}" for i in range(n)] + [f"x{j}" for j in range(exclusions)])
    keep = "" if spec.mode == "strict" or narrow else f" WHERE {matched}"
    epochs = "".join(
        f", sum(CASE WHEN x{j} THEN 1 ELSE 0 END) OVER (PARTITION BY {unit} ORDER BY t "
        f"RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS xe{j}"
        for j in range(exclusions)
    )
    ctes.append(f"ev AS (SELECT *{epochs} FROM {source}{keep})")


def _any_levels(
    spec: FunnelSpec, ctes: list[str], end_us: str, exclusions: int
) -> tuple[list[str], str, str]:
    """The ``any`` mode: distinct steps done within a window ending at each event. Returns the
    reached columns, the open-chain condition and the first-step condition."""
    n, W = len(spec.steps), spec.window_seconds * MICROS
    guard = "".join(f", xe{j}" for j in range(exclusions))
    frame = f"PARTITION BY pid, sn{guard} ORDER BY t RANGE BETWEEN {W} PRECEDING AND CURRENT ROW"
    done = " + ".join(f"max(CASE WHEN m{i} THEN 1 ELSE 0 END) OVER ({frame})" for i in range(n))
    ctes.append(f"levels AS (SELECT *, {done} AS done FROM ev)")
    reached = [f"min(CASE WHEN done >= {k + 1} THEN t END) AS t_{k}" for k in range(n)]
    open_row = f"t > {end_us} - {W} AND done < {n}"
    first = "done >= 1 AND (" + " OR ".join(f"m{i}" for i in range(n)) + ")"
    return reached, open_row, first


def _strict_levels(
    spec: FunnelSpec, ctes: list[str], end_us: str, has_id: bool
) -> tuple[list[str], str, str]:
    """The ``strict`` mode: only consecutive events of the unit chain. Returns as :func:`_any_levels`."""
    n, W = len(spec.steps), spec.window_seconds * MICROS
    previous = "l0"
    ctes.append("l0 AS (SELECT *, CASE WHEN m0 THEN t END AS s0 FROM ev)")
    for k in range(1, n):
        window = f"PARTITION BY pid, sn ORDER BY t, et{', _tb' if has_id else ''}"
        raw = (
            f"CASE WHEN m{k} AND t - lag(t) OVER ({window}) <= {spec.limit_micros(k)} "
            f"THEN lag(s{k - 1}) OVER ({window}) END"
        )
        ctes.append(
            f"l{k} AS (SELECT *, CASE WHEN r{k} >= t - {W} THEN r{k} END AS s{k} "
            f"FROM (SELECT *, {raw} AS r{k} FROM {previous}) AS q{k})"
        )
        previous = f"l{k}"
    reached = [f"min(CASE WHEN s{k} IS NOT NULL THEN t END) AS t_{k}" for k in range(n)]
    # A chain at level k can still advance when its window and step k+1's limit are
    # open at the end of the data and nothing came after its last event.
    last = f" AND lead(t) OVER (PARTITION BY pid, sn ORDER BY t, et{', _tb' if has_id else ''}) IS NULL"
    open_row = " OR ".join(
        f"(s{k} IS NOT NULL AND s{k} > {end_us} - {W} AND t > {end_us} - {spec.limit_micros(k + 1)}{last})"
        for k in range(n - 1)
    )
    ctes.append(f"levels AS (SELECT *, CASE WHEN {open_row} THEN 1 ELSE 0 END AS op FROM {previous})")
    return reached, "op = 1", "s0 IS NOT NULL"


def _units_sql(
    spec: FunnelSpec, ctes: list[str], dialect: Dialect, reached: list[str], open_row: str, first: str
) -> str:
    """The ``any`` and ``strict`` modes' units from ``levels``, and the whole query."""
    n = len(spec.steps)
    width = 20
    first_sql = (
        f"min(CASE WHEN {first} THEN lpad(CAST(t AS {dialect.string_type}), {width}, '0') "
        f"|| coalesce(ch, '') END) AS fc"
    )
    ctes.append(
        "units AS (SELECT pid, sn, "
        + ", ".join(reached)
        + f", max(CASE WHEN {open_row} THEN 1 ELSE 0 END) AS open_chain, "
        f"max(se) AS session_end, {first_sql} "
        "FROM levels GROUP BY pid, sn)"
    )
    columns_out = ", ".join(f"t_{k}" for k in range(n))
    return (
        "WITH "
        + ",\n".join(ctes)
        + f"\nSELECT pid AS profile_id, sn AS session, {columns_out}, open_chain, session_end, "
        f"nullif(substring(fc, {width + 1}), '') AS first_channel FROM units WHERE t_0 IS NOT NULL"
    )


def _ordered_sql(
    spec: FunnelSpec, ctes: list[str], dialect: Dialect, end_us: str, exclusions: int, first_channel: bool
) -> str:
    """The ordered funnel after ``ev``: the chains of every step (:func:`_ordered_steps`), then
    per unit when it reached each step, whether a chain is open, and the first step's channel
    (without ``first_channel``, no channel column is carried nor aggregated: NULL)."""
    n, W = len(spec.steps), spec.window_seconds * MICROS
    keys = ["pid", "sn"] if spec.session_gap_seconds else ["pid"]
    key = ", ".join(keys)
    se = ", se" if spec.session_gap_seconds else ""
    ch = ", ch" if first_channel else ""
    _ordered_steps(spec, ctes, dialect, keys, exclusions, ch)
    nothing = "CAST(NULL AS BIGINT)"
    extra = (f", CAST(NULL AS {dialect.string_type}) AS ch" if ch else "") + (
        f", {nothing} AS se" if se else ""
    )
    union = " UNION ALL ".join(
        f"SELECT {key}, t, s, {k} AS lvl" + (f"{ch}{se}" if k == 0 else extra) + f" FROM lv{k}"
        for k in range(n)
    )
    # A chain at step k can still advance when its window and step k+1's limit are open at
    # the end of the data.
    open_row = " OR ".join(
        f"(lvl = {k} AND s > {end_us} - {W} AND t > {end_us} - {spec.limit_micros(k + 1)})"
        for k in range(n - 1)
    )
    reached = ", ".join(f"min(CASE WHEN lvl = {k} THEN t END) AS t_{k}" for k in range(n))
    # The first step's channel: of its earliest event, the smallest channel on a tie.
    channel = "coalesce(ch, '')"
    first = (
        f"min_by(CASE WHEN lvl = 0 THEN {channel} END, "
        f"CASE WHEN lvl = 0 THEN {dialect.pair('t', channel)} END) AS fc"
        if first_channel
        else f"CAST(NULL AS {dialect.string_type}) AS fc"
    )
    session_end = "max(se)" if se else f"CAST({end_us} AS BIGINT)"
    session = "sn" if spec.session_gap_seconds else "CAST(0 AS BIGINT)"
    columns_out = ", ".join(f"t_{k}" for k in range(n))
    ctes.append(
        f"units AS (SELECT {key}, {reached}, max(CASE WHEN {open_row} THEN 1 ELSE 0 END) AS open_chain, "
        f"{session_end} AS session_end, {first} FROM ({union}) AS levels GROUP BY {key})"
    )
    return (
        "WITH "
        + ",\n".join(ctes)
        + f"\nSELECT pid AS profile_id, {session} AS session, {columns_out}, open_chain, session_end, "
        "nullif(fc, '') AS first_channel FROM units"
    )


def _ordered_steps(
    spec: FunnelSpec, ctes: list[str], dialect: Dialect, keys: list[str], exclusions: int, ch: str
) -> None:
    """Appends one relation per step (``lv0`` ..) of the events where a chain reaches it, with
    the chain's latest start ``s``.

    A chain's latest start never decreases along a unit's events of one step (a later event
    has every earlier predecessor and more), so the latest start among the earlier chains of
    the step before (in reach, in the same exclusion epoch) is the latest earlier chain's.
    DuckDB takes the max over a hash join on the unit (what a hand-written DuckDB funnel
    does: as fast); Spark a running max over a window (no pairs, whatever a unit's size):
    the same rows. Step k's pass sees only the chains of step k-1 and the events of step k:
    later steps cost less, not more.
    """
    n, W = len(spec.steps), spec.window_seconds * MICROS
    key = ", ".join(keys)
    xs = "".join(f", xe{j}" for j in range(exclusions))
    se = ", se" if spec.session_gap_seconds else ""
    ctes.append(f"lv0 AS (SELECT {key}, t, t AS s{ch}{se}{xs} FROM ev WHERE m0)")
    for k in range(1, n):
        guards = [f"xe{j}" for j, x in enumerate(spec.exclusions) if x.first < k <= x.last]
        limit = spec.limit_micros(k)
        # Step k's events, of the profiles with a chain at step k-1 only.
        candidates = f"SELECT {key}, t{xs} FROM ev WHERE m{k}"
        if dialect.join_steps:
            # A hash join on the unit, the latest start among the earlier chains in reach
            # (by the monotony above, the latest chain's): what a hand-written DuckDB funnel does.
            on = " AND ".join(f"e.{c} = p.{c}" for c in keys + guards)
            ex = "".join(f", e.xe{j}" for j in range(exclusions))
            group = ", ".join(f"e.{c}" for c in keys) + ", e.t" + ex
            ctes.append(
                f"lv{k} AS (SELECT {group}, max(p.s) AS s FROM ({candidates}) AS e "
                f"JOIN lv{k - 1} AS p ON {on} AND p.t < e.t AND p.t >= e.t - {limit} AND p.s >= e.t - {W} "
                f"GROUP BY {group})"
            )
        else:
            # The latest earlier chain within the step limit: a sliding max when the limit is
            # tighter than the window, else a running one (an older start fails the check).
            lower = f"{limit} PRECEDING" if limit < W else "UNBOUNDED PRECEDING"
            frame = (
                f"PARTITION BY {', '.join(keys + guards)} ORDER BY t RANGE BETWEEN {lower} AND 1 PRECEDING"
            )
            ctes.append(
                f"lv{k} AS (SELECT {key}, t, r AS s{xs} FROM ("
                f"SELECT *, CASE WHEN is_k THEN max(s) OVER ({frame}) END AS r FROM ("
                f"SELECT {key}, t, s{xs}, false AS is_k FROM lv{k - 1} UNION ALL "
                f"SELECT {key}, t, CAST(NULL AS BIGINT) AS s{xs}, true AS is_k FROM ({candidates}"
                f" AND pid IN (SELECT pid FROM lv{k - 1})) AS c{k}"
                f") AS u{k}) AS w{k} WHERE is_k AND r >= t - {W})"
            )


def fallout_next_sql(fallen: str, events: str, end: dt.datetime, dialect: Dialect) -> str:
    """For each fallen unit (``fallen``: profile_id, step, after_t in microseconds), the type and
    channel of its next event after ``after_t`` (the smallest on a tie; NULL when none came)."""
    q = dialect.ident
    return f"""
        WITH e AS (
            SELECT {q("profile_id")} AS pid, {dialect.micros(q("timestamp"))} AS t,
                   {q("event_type")} AS et, {q("channel")} AS ch
            FROM {events} WHERE {q("timestamp")} < {dialect.timestamp(end)}
        ), nx AS (
            SELECT f.profile_id, f.step, f.after_t, min(e.t) AS nt
            FROM {fallen} f LEFT JOIN e ON e.pid = f.profile_id AND e.t > f.after_t
            GROUP BY f.profile_id, f.step, f.after_t
        )
        SELECT nx.step, nx.profile_id, nx.after_t, min(e.et) AS next_event, min(e.ch) AS next_channel
        FROM nx LEFT JOIN e ON e.pid = nx.profile_id AND e.t = nx.nt
        GROUP BY nx.step, nx.profile_id, nx.after_t
    """
