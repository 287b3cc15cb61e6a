"""Destination exports: one as-of's memberships -> one file per destination and segment.

For each destination (``DestinationConfig``) and each of its segments, the profiles in the
segment at ``as_of`` (status ``realized`` or ``existing``; also ``exited`` when the destination
sets ``include_exited``, so it can remove them) are written with only the identity namespaces
that destination may receive, one row per identity value:

    namespace, value, segment, status, qualified_at, as_of, marketing_action

sorted by (namespace, value), to ``EXPORT_DIR/destination=<name>/as_of=<date>/segment=<s>.csv``
(or ``.parquet``), with a ``manifest.json`` of counts. Each destination's directory is
written atomically and replaced whole on a re-run (identical bytes for identical inputs).

Never exported: other namespaces (and raw email or phone, which do not exist after ingest), the
internal ``profile_id``, members of a segment's holdout (``arm = 'holdout'``, see
:mod:`propensity.features.activation.holdout`; counted as ``withheld_holdout``), members of
the destination's own holdout (a destination with ``holdout``: the same split, drawn among the
members its consents allow, recorded beside the memberships for ``measure``; counted as
``withheld_destination_holdout``), profiles that opted out of personalisation (they are not in
the memberships, and are filtered again here in case a file was produced otherwise), profiles
without an explicit 'y' for a consent the destination requires. A profile with no value of any
allowed namespace is skipped. Both are counted.

Consent withdrawals: a profile that opts out is in no later membership, so it never gets an
``exited`` row there. For a destination that syncs exits (``include_exited``), a profile that was
a member at the previous as-of (and was sent then: its consent allowed this destination) and has
no row at all now is exported as ``exited``, with the identities the destination received then,
so the audience drops them (counted as ``exited_withdrawn``).

Governance: a segment whose rule reads a model governed for another marketing action than
the destination's (or a model whose action is unknown) is refused for that destination;
:func:`check_destinations` raises before anything is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from propensity.core.config import DestinationConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, write_json
from propensity.features.activation.holdout import ArmCounts, HoldoutPolicy, assign_arms, destination_arms_dir
from propensity.features.activation.membership_store import (
    IDENTITIES_FILE,
    MEMBERSHIPS_FILE,
    has_arms,
    partition_dir,
    previous_as_of,
)
from propensity.features.sql import sql_string

EXPORTED_STATUSES: tuple[str, ...] = ("realized", "existing")


@dataclass
class SegmentExport:
    """One segment's file for one destination, and who was left out of it and why."""

    segment: str
    path: Path
    rows: int  # identity values written
    profiles: int  # profiles with at least one written value
    skipped_no_identity: int  # eligible, but no value of any namespace this destination may receive
    held_back_consent: int  # opted out of personalisation, or a required consent not given
    exited_withdrawn: int = 0  # sent at the previous as-of, gone since (consent withdrawn): exited
    withheld_holdout: int = 0  # members in the segment's holdout: never exported
    withheld_destination_holdout: int = 0  # members in the destination's own holdout
    arms: ArmCounts | None = None  # the destination's split of this segment (when it has a holdout)


@dataclass
class DestinationExport:
    destination: str
    directory: Path
    marketing_action: str
    identities: list[str]
    segments: list[SegmentExport]


def governance_refusals(
    destination: DestinationConfig,
    segment_models: Mapping[str, Sequence[str]],
    model_actions: Mapping[str, str | None],
) -> list[str]:
    """Why each of the destination's segments may not go there (empty: all may).

    ``segment_models``: segment -> the models its rule reads; ``model_actions``: model -> its
    governance ``marketing_action`` (None when the model has no config).
    """
    refusals = []
    for segment in destination.segments:
        for model in segment_models.get(segment, ()):
            action = model_actions.get(model)
            if action is None:
                refusals.append(
                    f"destination '{destination.name}': segment '{segment}' reads model '{model}', whose "
                    f"marketing action is unknown (no model config); refused"
                )
            elif action != destination.marketing_action:
                refusals.append(
                    f"destination '{destination.name}': segment '{segment}' reads model '{model}', governed "
                    f"for marketing action '{action}', not '{destination.marketing_action}'; refused"
                )
    return refusals


def recorded_namespaces(memberships_dir: str | Path, as_of: dt.date, summary: Mapping) -> list[str]:
    """The identity namespaces written with the memberships at ``as_of`` (from its summary)."""
    path = partition_dir(memberships_dir, as_of) / IDENTITIES_FILE
    namespaces = summary.get("identity_namespaces")
    if namespaces is None or not path.is_file():
        raise UserError(f"{path}: missing; re-run `propensity segments --as-of {as_of}` to write it")
    return list(namespaces)


def check_destinations(
    destinations: Sequence[DestinationConfig],
    segment_models: Mapping[str, Sequence[str]],
    model_actions: Mapping[str, str | None],
    namespaces: Sequence[str],
    as_of: dt.date,
) -> None:
    """Every destination's segments exist at ``as_of``, its namespaces are known and governance
    allows each segment; otherwise one UserError naming every problem."""
    problems = []
    for destination in destinations:
        for segment in destination.segments:
            if segment not in segment_models:
                problems.append(
                    f"destination '{destination.name}': segment '{segment}' has no memberships at {as_of} "
                    f"(segments: {', '.join(sorted(segment_models))})"
                )
        for namespace in destination.identities:
            if namespace not in namespaces:
                problems.append(
                    f"destination '{destination.name}': identity namespace '{namespace}' is not one the "
                    f"memberships carry ({', '.join(namespaces)})"
                )
        problems += governance_refusals(destination, segment_models, model_actions)
    if problems:
        raise UserError("; ".join(problems) + "; nothing was exported")


def _members_sql(memberships: Path, identities: Path, segment: str, destination: DestinationConfig) -> str:
    """The segment's members to consider, whether their consent allows this destination and
    whether they have an identity it may receive."""
    statuses = (*EXPORTED_STATUSES, "exited") if destination.include_exited else EXPORTED_STATUSES
    return f"""
        WITH {_consent_ctes(identities, destination)}
        SELECT m.profile_id, m.status, m.qualified_at, m.as_of,
               coalesce(c.consented, {"false" if destination.required_consents else "true"}) AS consented,
               coalesce(c.has_identity, false) AS has_identity, false AS withdrawn, false AS withheld
        FROM read_parquet({sql_string(str(memberships))}) m
        LEFT JOIN consent c ON c.profile_id = m.profile_id
        WHERE m.segment = {sql_string(segment)} AND m.status IN ({", ".join(sql_string(s) for s in statuses)})
          AND {_not_withheld(memberships)}
    """


def _not_withheld(memberships: Path) -> str:
    """SQL: the row is not in a holdout (holdout members are never exported, not even as exited)."""
    return "coalesce(m.arm, 'targeted') <> 'holdout'" if has_arms(memberships) else "true"


def withheld_count(con: duckdb.DuckDBPyConnection, memberships: Path, segment: str) -> int:
    """Members of ``segment`` (realized or existing) withheld in its holdout."""
    if not has_arms(memberships):
        return 0
    return con.execute(f"""
        SELECT count(*) FROM read_parquet({sql_string(str(memberships))})
        WHERE segment = {sql_string(segment)} AND arm = 'holdout' AND status IN ('realized', 'existing')
    """).fetchall()[0][0]


def _consent_ctes(identities: Path, destination: DestinationConfig) -> str:
    """``ids`` and ``consent``: per profile, whether its consent allows this destination (any
    'n' among its rows wins; a required consent needs 'y' on every row) and whether it has an
    identity the destination may receive."""
    required = "".join(f" AND coalesce(bool_and({c} = 'y'), false)" for c in destination.required_consents)
    allowed = ", ".join(sql_string(ns) for ns in destination.identities)
    return f"""ids AS (SELECT * FROM read_parquet({sql_string(str(identities))})),
        consent AS (
            SELECT profile_id,
                   NOT coalesce(bool_or(consent_personalization = 'n'), false){required} AS consented,
                   bool_or(namespace IN ({allowed})) AS has_identity
            FROM ids GROUP BY profile_id
        )"""


def _withdrawn_sql(
    memberships_dir: Path, as_of: dt.date, segment: str, destination: DestinationConfig
) -> str | None:
    """Members at the previous as-of whose consent allowed this destination then and who have no
    row at all now (an opt-out removes a profile from memberships): ``exited`` rows, so that a
    destination syncing exits removes them. None when there is no previous partition."""
    previous = previous_as_of(memberships_dir, as_of)
    if previous is None:
        return None
    before = partition_dir(memberships_dir, previous)
    if not (before / IDENTITIES_FILE).is_file():
        return None
    now = partition_dir(memberships_dir, as_of) / MEMBERSHIPS_FILE
    name = sql_string(segment)
    return f"""
        WITH {_consent_ctes(before / IDENTITIES_FILE, destination)}
        SELECT m.profile_id, 'exited' AS status, m.qualified_at, DATE '{as_of.isoformat()}' AS as_of,
               true AS consented, c.has_identity, true AS withdrawn, false AS withheld
        FROM read_parquet({sql_string(str(before / MEMBERSHIPS_FILE))}) m
        JOIN consent c ON c.profile_id = m.profile_id AND c.consented
        WHERE m.segment = {name} AND m.status IN ({", ".join(sql_string(s) for s in EXPORTED_STATUSES)})
          AND {_not_withheld(before / MEMBERSHIPS_FILE)}
          AND m.profile_id NOT IN (
              SELECT profile_id FROM read_parquet({sql_string(str(now))}) WHERE segment = {name}
          )
    """


def _export_sources(
    memberships_dir: Path, as_of: dt.date, destination: DestinationConfig, segment: str
) -> tuple[str, str]:
    """The segment's members for ``destination`` (with ``include_exited``, those who left since
    the previous date too, marked withdrawn) and the identities to send them by (SQL each)."""
    source = partition_dir(memberships_dir, as_of)
    identities = source / IDENTITIES_FILE
    members = _members_sql(source / MEMBERSHIPS_FILE, identities, segment, destination)
    id_sources = (
        "SELECT profile_id, namespace, value, false AS withdrawn "
        f"FROM read_parquet({sql_string(str(identities))})"
    )
    withdrawn = (
        _withdrawn_sql(memberships_dir, as_of, segment, destination) if destination.include_exited else None
    )
    if withdrawn is not None:
        members = f"({members}) UNION ALL ({withdrawn})"
        previous = partition_dir(memberships_dir, previous_as_of(memberships_dir, as_of)) / IDENTITIES_FILE
        id_sources += (
            " UNION ALL SELECT profile_id, namespace, value, true "
            f"FROM read_parquet({sql_string(str(previous))})"
        )
    return members, id_sources


def _write_export_file(
    con: duckdb.DuckDBPyConnection, id_sources: str, destination: DestinationConfig, segment: str, path: Path
) -> int:
    """The consented, not withheld members of ``_export_members`` at ``path``, one row per
    identity the destination accepts; the rows written, read back."""
    options = "FORMAT csv, HEADER true" if destination.format == "csv" else "FORMAT parquet, COMPRESSION zstd"
    allowed = ", ".join(sql_string(ns) for ns in destination.identities)
    con.execute(f"""
        COPY (
            SELECT i.namespace, i.value, {sql_string(segment)} AS segment, m.status, m.qualified_at, m.as_of,
                   {sql_string(destination.marketing_action)} AS marketing_action
            FROM _export_members m
            JOIN ({id_sources}) i
              ON i.profile_id = m.profile_id AND i.withdrawn = m.withdrawn AND i.namespace IN ({allowed})
            WHERE m.consented AND NOT m.withheld ORDER BY i.namespace, i.value
        ) TO {sql_string(str(path))} ({options})
    """)
    reader = f"read_{destination.format}({sql_string(str(path))})"
    return int(con.execute(f"SELECT count(*) FROM {reader}").fetchall()[0][0])


def _export_segment(
    con: duckdb.DuckDBPyConnection,
    memberships_dir: Path,
    as_of: dt.date,
    destination: DestinationConfig,
    segment: str,
    directory: Path,
) -> SegmentExport:
    source = partition_dir(memberships_dir, as_of)
    members, id_sources = _export_sources(memberships_dir, as_of, destination, segment)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _export_members AS {members}")
    policy = HoldoutPolicy.of(destination)
    arms = None
    if policy is not None:
        arms = _split_for_destination(con, memberships_dir, as_of, destination, segment, policy)
    held_back, skipped, exported, gone = con.execute("""
        SELECT count(*) FILTER (WHERE NOT consented), count(*) FILTER (WHERE consented AND NOT has_identity),
               count(*) FILTER (WHERE consented AND has_identity AND NOT withheld),
               count(*) FILTER (WHERE withdrawn AND consented AND has_identity AND NOT withheld)
        FROM _export_members
    """).fetchall()[0]
    path = directory / f"segment={segment}.{destination.format}"
    rows = _write_export_file(con, id_sources, destination, segment, path)
    con.execute("DROP TABLE _export_members")
    withheld = withheld_count(con, source / MEMBERSHIPS_FILE, segment)
    return SegmentExport(
        segment,
        path,
        int(rows),
        int(exported),
        int(skipped),
        int(held_back),
        int(gone),
        int(withheld),
        arms.holdout if arms is not None else 0,
        arms,
    )


def _split_for_destination(
    con: duckdb.DuckDBPyConnection,
    memberships_dir: Path,
    as_of: dt.date,
    destination: DestinationConfig,
    segment: str,
    policy: HoldoutPolicy,
) -> ArmCounts:
    """The destination's holdout of one segment (:func:`assign_arms`, as segments split): the
    members it may receive (consent first: the others are held back, in no arm) are split by the
    hash of profile, ``<destination>/<segment>`` and salt, arms carried from the previous date's
    record; the holdout is marked ``withheld`` in ``_export_members`` and every arm is added to
    ``_destination_arms``. A UserError when the holdout is under its minimum."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _destination_rows AS
        SELECT profile_id, {sql_string(segment)} AS segment,
               CASE WHEN consented AND has_identity THEN status ELSE 'held_back' END AS status,
               as_of, CAST(qualified_at AS DATE) AS qualified_at
        FROM _export_members
    """)
    previous = previous_as_of(memberships_dir, as_of)
    previous_dir = partition_dir(memberships_dir, previous) if previous else None
    identities = partition_dir(memberships_dir, as_of) / IDENTITIES_FILE
    identity_map = f"read_parquet({sql_string(str(identities))})"
    counts = assign_arms(
        con, {segment: policy}, previous_dir, as_of, identity_map, "_destination_rows", destination.name
    )
    con.execute("""
        UPDATE _export_members SET withheld = true
        WHERE profile_id IN (SELECT profile_id FROM _destination_rows WHERE arm = 'holdout')
    """)
    con.execute("""
        INSERT INTO _destination_arms
        SELECT profile_id, segment, status, as_of, qualified_at, arm, arm_since
        FROM _destination_rows WHERE arm IS NOT NULL
    """)
    con.execute("DROP TABLE _destination_rows")
    return counts[0]


def _record_destination_arms(
    con: duckdb.DuckDBPyConnection,
    memberships_dir: Path,
    as_of: dt.date,
    exports: list[SegmentExport],
    name: str,
) -> None:
    """Write ``_destination_arms`` and the splits' counts beside the memberships at ``as_of``
    (:func:`destination_arms_dir`), atomically: what ``measure --destination`` reads."""
    target = partition_dir(memberships_dir, as_of) / destination_arms_dir(name)
    with atomic_path(target, root=memberships_dir, kind="segments") as tmp:
        tmp.mkdir(parents=True)
        con.execute(f"""
            COPY (SELECT * FROM _destination_arms ORDER BY segment, profile_id)
            TO {sql_string(str(tmp / "arms.parquet"))} (FORMAT parquet, COMPRESSION zstd)
        """)
        holdout = {e.segment: e.arms.as_dict() for e in exports if e.arms is not None}
        write_json({"destination": name, "as_of": str(as_of), "holdout": holdout}, tmp / "summary.json")


def _restrict(directory: Path, mode: int) -> None:
    """Give the export's files ``mode`` and its folder the same bits plus search where read is
    set (identities are personal data: by default only the owner may read them)."""
    for path in directory.iterdir():
        path.chmod(mode)
    directory.chmod(mode | ((mode & 0o444) >> 2))


def export_destination(
    con: duckdb.DuckDBPyConnection,
    memberships_dir: str | Path,
    as_of: dt.date,
    destination: DestinationConfig,
    export_dir: str | Path,
) -> DestinationExport:
    """Write one destination's segment files for ``as_of`` (checked by :func:`check_destinations`
    first) to ``export_dir/destination=<name>/as_of=<date>/``, atomically."""
    target = Path(export_dir) / f"destination={destination.name}" / f"as_of={as_of}"
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _destination_arms (profile_id VARCHAR, segment VARCHAR, status VARCHAR,
            as_of DATE, qualified_at DATE, arm VARCHAR, arm_since DATE)
    """)
    with atomic_path(target, root=export_dir, kind="exports") as tmp:
        tmp.mkdir(parents=True)
        exports = [
            _export_segment(con, Path(memberships_dir), as_of, destination, segment, tmp)
            for segment in destination.segments
        ]
        if destination.holdout is not None:
            _record_destination_arms(con, Path(memberships_dir), as_of, exports, destination.name)
        for export in exports:
            export.path = target / export.path.name
        write_json(
            {
                "destination": destination.name,
                "as_of": str(as_of),
                "marketing_action": destination.marketing_action,
                "identities": destination.identities,
                "include_exited": destination.include_exited,
                "required_consents": destination.required_consents,
                "segments": {
                    e.segment: {
                        "file": e.path.name,
                        "rows": e.rows,
                        "profiles": e.profiles,
                        "skipped_no_identity": e.skipped_no_identity,
                        "held_back_consent": e.held_back_consent,
                        "exited_withdrawn": e.exited_withdrawn,
                        "withheld_holdout": e.withheld_holdout,
                        "withheld_destination_holdout": e.withheld_destination_holdout,
                    }
                    for e in exports
                },
            },
            tmp / "manifest.json",
        )
        _restrict(tmp, int(destination.file_mode, 8))
    return DestinationExport(
        destination.name, target, destination.marketing_action, list(destination.identities), exports
    )
