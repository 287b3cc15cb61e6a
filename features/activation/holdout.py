"""Holdout groups: a deterministic share of a segment's members withheld from every export.

A segment that declares ``holdout: 0.1`` splits its qualifying members (consent applies first:
opted-out profiles are in no membership at all) into ``targeted`` and ``holdout``, recorded in
the memberships as ``arm`` with ``arm_since``, the date the member entered the arm:

* a member already in an arm keeps it (carried from the previous date through the profile and
  through its identities, so a profile formed by a merge inherits an arm); when several earlier
  profiles merged, the earliest assignment wins, ``holdout`` before ``targeted`` on the same
  date (never export someone who was withheld); such merges across arms are counted;
* anyone else is drawn by a hash: the first 32 bits of ``md5(profile_id|segment|salt)`` over
  2^32, below the share is ``holdout``. md5 is the same in every engine and version, so the
  draw is the same on DuckDB and Spark, on every re-run, and on every date.

Identity values (a household e-mail, a shared device) held by members of both arms of a
segment are counted as contamination: the holdout may have seen the campaign through them.
A holdout smaller than the segment's ``holdout_minimum`` is refused with the lift it could
detect (80 % power, alpha 0.05, at the segment's ``baseline_rate``).

The assignment runs on the rows of the qualification (the ``_segment_rows`` table) in DuckDB,
for both engines (the Spark wing brings its rows to the driver): one code path, one result.

A destination may declare a holdout too (``DestinationConfig.holdout``): the same split, run by
the export on the members that destination's consents allow (consent first, then the split),
hashed on ``<destination>/<segment>`` so that each destination draws its own holdout, and
recorded beside the memberships in :func:`destination_arms_file` (profile_id, segment, status,
arm, arm_since; the previous date's file carries the arms forward as memberships do).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from propensity.core.config import HoldoutFields
from propensity.core.errors import UserError
from propensity.core.power import minimum_detectable_lift
from propensity.features.sql import sql_string

ARMS: tuple[str, ...] = ("targeted", "holdout")
ARM_COLUMNS: tuple[str, ...] = ("arm", "arm_since")


@dataclass(frozen=True)
class HoldoutPolicy:
    """A segment's (or a destination's) holdout: the share withheld, the hash salt, the smallest
    holdout accepted and the outcome rate its power figures assume."""

    share: float
    salt: str = ""
    minimum: int = 1000
    baseline_rate: float = 0.05

    @classmethod
    def of(cls, config: HoldoutFields) -> HoldoutPolicy | None:
        """The policy a segment or destination config declares (None: no holdout)."""
        if config.holdout is None:
            return None
        return cls(config.holdout, config.holdout_salt, config.holdout_minimum, config.baseline_rate)


@dataclass
class ArmCounts:
    """One segment's split at an as-of (members: realized or existing)."""

    segment: str
    targeted: int
    holdout: int
    carried: int  # members whose arm came from an earlier date
    merged_across_arms: int  # members formed from earlier profiles in different arms
    shared_identities: int  # identity values held by members of both arms
    minimum_detectable_lift: float  # absolute, at the policy's baseline rate

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def hash_draw_sql(profile: str, segment: str, salt: str) -> str:
    """SQL (DuckDB) of a member's uniform draw in [0, 1): the first 32 bits of an md5 of the
    three SQL expressions (profile id, segment name, salt) joined by '|'."""
    key = f"{profile} || '|' || {segment} || '|' || {salt}"
    return f"(('0x' || substr(md5({key}), 1, 8))::UBIGINT / 4294967296.0)"


def _previous_sql(
    con: duckdb.DuckDBPyConnection, previous_dir: Path | None, arms_file: str
) -> tuple[str, str]:
    """The previous date's (arms, identities) relations (arms from ``arms_file`` in
    ``previous_dir``); empty when it has none."""
    empty_arms = "SELECT NULL::VARCHAR profile_id, NULL::VARCHAR segment, NULL::VARCHAR earliest LIMIT 0"
    empty_ids = (
        "SELECT NULL::VARCHAR segment, NULL::VARCHAR earliest, NULL::VARCHAR namespace, "
        "NULL::VARCHAR value LIMIT 0"
    )
    if previous_dir is None or not (previous_dir / arms_file).is_file():
        return empty_arms, empty_ids
    memberships = f"read_parquet({sql_string(str(previous_dir / arms_file))})"
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {memberships}").fetchall()}
    if "arm" not in columns:
        return empty_arms, empty_ids
    arms = (
        f"SELECT profile_id, segment, strftime(arm_since, '%Y-%m-%d') || arm AS earliest "
        f"FROM {memberships} WHERE arm IS NOT NULL"
    )
    identities = previous_dir / "identities.parquet"
    if not identities.is_file():
        return arms, empty_ids
    ids = f"""SELECT a.segment, a.earliest, i.namespace, i.value
              FROM ({arms}) a JOIN read_parquet({sql_string(str(identities))}) i USING (profile_id)"""
    return arms, ids


def assign_arms(
    con: duckdb.DuckDBPyConnection,
    policies: dict[str, HoldoutPolicy],
    previous_dir: Path | None,
    as_of: dt.date,
    identity_map: str | None,
    rows: str = "_segment_rows",
    destination: str | None = None,
) -> list[ArmCounts]:
    """Add ``arm`` and ``arm_since`` to the table ``rows`` (profile_id, segment, status, as_of,
    qualified_at; NULL for segments without a holdout and for held-back rows) and return each
    holdout segment's counts; a UserError when a holdout is under its minimum.
    ``identity_map``: the relation of the profiles' identities (None: arms are carried by
    profile id only, and shared identities are not counted). ``destination``: the split is that
    destination's (its name joins the hash key, ``<destination>/<segment>``, and the previous
    arms are read from its :func:`destination_arms_file`), otherwise the segments' own."""
    identity_map = identity_map or (
        "(SELECT NULL::VARCHAR profile_id, NULL::VARCHAR namespace, NULL::VARCHAR value LIMIT 0)"
    )
    arms = _arms_sql(con, policies, previous_dir, as_of, identity_map, rows, destination)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {rows} AS {arms}")
    counts = _arm_counts(con, policies, identity_map, rows)
    _refuse_small(
        counts, policies, "segment" if destination is None else f"destination '{destination}', segment"
    )
    return counts


def _arms_sql(
    con: duckdb.DuckDBPyConnection,
    policies: dict[str, HoldoutPolicy],
    previous_dir: Path | None,
    as_of: dt.date,
    identity_map: str,
    rows: str,
    destination: str | None,
) -> str:
    """``rows`` with ``arm`` and ``arm_since`` (and whether the arm was carried, or met two arms
    through shared identities): a member keeps the earliest arm any of its identities or its
    profile had, else draws one by hash (see :func:`assign_arms`)."""
    values = ", ".join(
        f"({sql_string(s)}, {p.share!r}, {sql_string(p.salt)})" for s, p in sorted(policies.items())
    )
    arms_file = "memberships.parquet" if destination is None else destination_arms_file(destination)
    previous_arms, previous_ids = _previous_sql(con, previous_dir, arms_file)
    unit = "r.segment" if destination is None else f"{sql_string(destination + '/')} || r.segment"
    draw = hash_draw_sql("r.profile_id", unit, "p.salt")
    day = f"DATE '{as_of.isoformat()}'"
    return f"""
        WITH policy(segment, share, salt) AS (VALUES {values}),
        previous_ids AS ({previous_ids}),
        members AS (
            SELECT r.profile_id, r.segment FROM {rows} r JOIN policy USING (segment)
            WHERE r.status IN ('realized', 'existing')
        ),
        via_identity AS (
            SELECT m.profile_id, m.segment, min(p.earliest) AS earliest,
                   count(DISTINCT substr(p.earliest, 11)) AS arms
            FROM members m
            JOIN {identity_map} i ON i.profile_id = m.profile_id
            JOIN previous_ids p ON p.segment = m.segment AND p.namespace = i.namespace AND p.value = i.value
            GROUP BY ALL
        ),
        via_profile AS ({previous_arms}),
        assigned AS (
            SELECT r.*, least(vi.earliest, vp.earliest) AS earliest, coalesce(vi.arms, 0) > 1 AS merged,
                   CASE WHEN {draw} < p.share THEN 'holdout' ELSE 'targeted' END AS drawn,
                   p.segment IS NOT NULL AND r.status <> 'held_back' AS split
            FROM {rows} r
            LEFT JOIN policy p USING (segment)
            LEFT JOIN via_identity vi USING (profile_id, segment)
            LEFT JOIN via_profile vp USING (profile_id, segment)
        )
        SELECT profile_id, segment, status, as_of, qualified_at,
               CASE WHEN split THEN coalesce(substr(earliest, 11), drawn) END AS arm,
               CASE WHEN split THEN coalesce(CAST(substr(earliest, 1, 10) AS DATE), {day}) END AS arm_since,
               split AND earliest IS NOT NULL AS carried, split AND merged AS merged_across_arms
        FROM assigned
    """


def destination_arms_dir(destination: str) -> str:
    """The folder, in a memberships partition, where a destination's export records its arms
    (``arms.parquet``) and their counts (``summary.json``)."""
    return f"holdout_destination={destination}"


def destination_arms_file(destination: str) -> str:
    """The arms a destination's export recorded, relative to a memberships partition."""
    return f"{destination_arms_dir(destination)}/arms.parquet"


def _arm_counts(
    con: duckdb.DuckDBPyConnection, policies: dict[str, HoldoutPolicy], identity_map: str, table: str
) -> list[ArmCounts]:
    rows = con.execute(f"""
        SELECT segment, count(*) FILTER (arm = 'targeted'), count(*) FILTER (arm = 'holdout'),
               count(*) FILTER (carried), count(*) FILTER (merged_across_arms)
        FROM {table} WHERE arm IS NOT NULL AND status IN ('realized', 'existing') GROUP BY segment
    """).fetchall()
    shared = dict(
        con.execute(f"""
        SELECT segment, count(*) FROM (
            SELECT r.segment, i.namespace, i.value FROM {table} r
            JOIN {identity_map} i USING (profile_id)
            WHERE r.arm IS NOT NULL AND r.status IN ('realized', 'existing')
            GROUP BY ALL HAVING count(DISTINCT r.arm) > 1
        ) GROUP BY segment
    """).fetchall()
    )
    found = {r[0]: r for r in rows}
    out = []
    for segment, policy in sorted(policies.items()):
        _, targeted, holdout, carried, merged = found.get(segment, (segment, 0, 0, 0, 0))
        mde = minimum_detectable_lift(policy.baseline_rate, targeted, holdout)
        out.append(ArmCounts(segment, targeted, holdout, carried, merged, int(shared.get(segment, 0)), mde))
    return out


def _refuse_small(counts: list[ArmCounts], policies: dict[str, HoldoutPolicy], unit: str) -> None:
    """A UserError naming every segment (``unit``: how to name it) whose holdout is under its
    minimum, with its power."""
    problems = []
    for c in counts:
        policy = policies[c.segment]
        if c.holdout < policy.minimum:
            relative = c.minimum_detectable_lift / policy.baseline_rate
            problems.append(
                f"{unit} '{c.segment}': a holdout of {c.holdout:,} profiles ({policy.share:.0%} of "
                f"{c.holdout + c.targeted:,}) is under the minimum of {policy.minimum:,}: at 80 % power and "
                f"alpha 0.05 it detects only an absolute lift of {c.minimum_detectable_lift:.2%} on a "
                f"{policy.baseline_rate:.1%} baseline ({relative:.0%} relative); raise holdout, or lower "
                f"holdout_minimum to accept it"
            )
    if problems:
        raise UserError("; ".join(problems))
