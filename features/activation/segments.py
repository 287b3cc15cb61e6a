"""Segment qualification: rules over point-in-time features and model scores -> memberships.

A segment is a checked rule (:mod:`propensity.features.build.rules`) over the feature table at
``as_of`` (every profile with events in the lookback, with its attributes) LEFT JOINed with
the score partitions of the models the rule names, at the same ``as_of``. A profile a model
did not score has NULL scores and does not qualify on them.

Each ``as_of`` is one directory ``OUT/as_of=<date>/``, written atomically:

* ``memberships.parquet``: ``profile_id``, ``segment``, ``status``, ``as_of``,
  ``qualified_at``, sorted by (segment, profile_id);
* ``identities.parquet``: ``profile_id``, ``namespace``, ``value``, and the profile's consent
  flags, one row per identity value of every profile in the memberships: what an export
  needs, so exports never re-read events (and identities are those of the qualification);
* ``summary.json``: the segment rules and the models they read, counts per status, the
  profiles held back for consent, and which previous as-of the statuses were computed from.

Statuses against the *previous* as-of (the latest earlier date present in ``OUT``):
``realized`` = qualifies now and was not in the previous qualified set (first run, entry or
re-entry); ``existing`` = qualifies now and did before; ``exited`` = was in the previous
qualified set (realized or existing there) and does not qualify now. ``qualified_at`` is the
date the current stay began: ``as_of`` for realized, carried forward for existing; an exited
row keeps the date its ended stay began, and its ``as_of`` is the date it left.

Segments are compared by name: a segment new in the file starts with realized members only;
one removed from the file is no longer written (its members do not "exit").

Consent: a profile whose ``consent_personalization`` is ``'n'`` appears in no membership file,
not even as ``exited``; per segment, the qualifying ones held back are counted. A missing
flag (not given) does not hold a profile back; destinations may require an explicit 'y'.

Back-fill: writing a date earlier than dates already present uses the latest earlier date as
its previous, so it is computed correctly; but the next later date's statuses were computed
against another previous. That is detected (each summary records its previous date and a
fingerprint of that date's qualified set) and reported as ``stale_later``; re-running those
dates in date order restates them. Nothing is rewritten behind the user's back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow.parquet as pq

from propensity.core.config import SegmentConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, write_json
from propensity.core.score_table import RULE_COLUMNS
from propensity.features.activation.holdout import ARM_COLUMNS, ArmCounts, HoldoutPolicy, assign_arms
from propensity.features.activation.membership_store import (
    IDENTITIES_FILE,
    MEMBERSHIPS_FILE,
    SUMMARY_FILE,
    partition_dir,
    previous_as_of,
    qualified_fingerprint,
    stale_later_dates,
    stored_fingerprint,
)
from propensity.features.activation.qualification_sql import HELD_BACK, qualification_sql
from propensity.features.build.registry import CARRIED_COLUMNS
from propensity.features.build.rules import Rule, parse_rule
from propensity.features.sql import sql_string, usable_kinds

STATUSES: tuple[str, ...] = ("realized", "existing", "exited")
# Score table columns a rule may read, as `<model>.<column>` (ARCHITECTURE.md "Score table").
SCORE_COLUMNS: dict[str, str] = RULE_COLUMNS
CONSENT_COLUMNS: tuple[str, ...] = CARRIED_COLUMNS  # consent_personalization, consent_marketing


@dataclass(frozen=True)
class Segment:
    """A segment whose rule has been checked against the feature and score columns."""

    name: str
    rule: Rule
    description: str = ""
    holdout: HoldoutPolicy | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """The models whose scores the rule reads, sorted."""
        return tuple(sorted(self.rule.qualifiers))


@dataclass
class SegmentCounts:
    segment: str
    realized: int = 0
    existing: int = 0
    exited: int = 0
    held_back: int = 0  # qualified but opted out of personalisation: in no output

    @property
    def size(self) -> int:
        """Profiles in the segment at this as-of (realized + existing)."""
        return self.realized + self.existing


@dataclass
class Qualification:
    """What one as-of's qualification wrote."""

    as_of: dt.date
    directory: Path
    previous_as_of: dt.date | None
    counts: list[SegmentCounts]
    rows: int
    profiles: int
    identities: int | None = None  # rows of identities.parquet (None: not written)
    identity_namespaces: list[str] | None = None
    # Later dates whose statuses were computed against another previous (see module doc).
    stale_later: list[dt.date] = field(default_factory=list)
    arms: list[ArmCounts] = field(default_factory=list)  # segments with a holdout


def column_kinds(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, str]:
    """Each usable column of a query and its kind, from DuckDB's binder (nothing is run)."""
    described = con.execute(f"DESCRIBE SELECT * FROM ({relation_sql}) AS described").fetchall()
    return usable_kinds((name, str(dtype)) for name, dtype, *_ in described)


def compile_segments(
    definitions: Sequence[SegmentConfig],
    feature_kinds: Mapping[str, str],
    models: Iterable[str],
    source: str,
) -> list[Segment]:
    """Check every segment's rule against the feature columns and ``<model>.<score column>``.

    ``models``: the models a rule may name (configured or with scores). ``source`` (the
    segments file) prefixes error messages, which also name the segment.
    """
    columns = dict(feature_kinds)
    for model in models:
        columns.update({f"{model}.{column}": kind for column, kind in SCORE_COLUMNS.items()})
    return [
        Segment(
            d.name,
            parse_rule(d.rule, columns, f"{source}: segment '{d.name}'"),
            d.description,
            HoldoutPolicy.of(d),
        )
        for d in definitions
    ]


def score_files(scores_dir: str | Path, segments: Sequence[Segment], as_of: dt.date) -> dict[str, list[str]]:
    """The Parquet files of each model the segments read, at ``as_of``; missing is a UserError."""
    files: dict[str, list[str]] = {}
    for segment in segments:
        for model in segment.models:
            if model not in files:
                files[model] = score_partition(scores_dir, model, as_of, f"segment '{segment.name}'")
            _check_uplift_column(segment, model, files[model])
    return files


def _check_uplift_column(segment: Segment, model: str, files: list[str]) -> None:
    """A rule reading ``<model>.uplift`` needs an uplift model's scores: a clear error otherwise
    (not the SQL engine's unknown-column message)."""
    if f"{model}.uplift" in segment.rule.columns and "uplift" not in pq.read_schema(files[0]).names:
        raise UserError(
            f"segment '{segment.name}': rule reads `{model}.uplift` but model '{model}' is not an uplift "
            f"model (its scores in {Path(files[0]).parent} have no uplift column); give its config a "
            "`treatment` and retrain"
        )


def score_partition(scores_dir: str | Path, model: str, as_of: dt.date, who: str = "") -> list[str]:
    """The Parquet files of ``SCORES_DIR/model=<model>/as_of=<date>/``; missing is a UserError
    naming ``who`` needs it, the model and the partition."""
    directory = Path(scores_dir) / f"model={model}" / f"as_of={as_of}"
    found = sorted(str(p) for p in directory.rglob("*.parquet")) if directory.is_dir() else []
    if not found:
        raise UserError(
            f"{who + ': ' if who else ''}model '{model}' has no scores at {as_of} (no Parquet under "
            f"{directory}); run `propensity score {model} --as-of {as_of}` first"
        )
    return found


def _write_identities(
    con: duckdb.DuckDBPyConnection,
    target: Path,
    namespaces: Sequence[str],
    identity_map: str = "identity_map",
    profiles: str = "profiles",
) -> int:
    """Every identity (in ``namespaces``) of every profile in ``_segment_rows``, with the
    profile's consent flags: one row per value, sorted. ``identity_map`` and ``profiles`` name
    the relations of the profiles as of the qualified date. Returns the number of rows."""
    available = {r[0] for r in con.execute(f"DESCRIBE {profiles}").fetchall()}
    consent = ", ".join(
        f"CAST({'p.' + c if c in available else 'NULL'} AS VARCHAR) AS {c}" for c in CONSENT_COLUMNS
    )
    listed = ", ".join(sql_string(ns) for ns in namespaces) or "NULL"
    con.execute(f"""
        COPY (
            WITH members AS (SELECT DISTINCT profile_id FROM _segment_rows WHERE status <> '{HELD_BACK}')
            SELECT m.profile_id, i.namespace, i.value, {consent}
            FROM members m
            JOIN {identity_map} i ON i.profile_id = m.profile_id AND i.namespace IN ({listed})
            LEFT JOIN {profiles} p ON p.profile_id = m.profile_id
            ORDER BY m.profile_id, i.namespace, i.value
        ) TO {sql_string(str(target))} (FORMAT parquet, COMPRESSION zstd)
    """)
    return con.execute(f"SELECT count(*) FROM read_parquet({sql_string(str(target))})").fetchall()[0][0]


class SegmentRows(Protocol):
    """Where a qualification's query runs (a DuckDB connection, or Spark) and how its rows reach
    the DuckDB connection :func:`write_qualification` writes from."""

    dialect: str  # duckdb | spark: the SQL the query is compiled to

    def inputs(
        self, features: Any, scores: Mapping[str, Sequence[str]], previous_file: Path | None
    ) -> tuple[str, dict[str, str]]:
        """The feature snapshot as a query, and the relations the query reads by name (model ->
        its scores, ``previous`` -> the previous memberships; none: it reads the files)."""
        ...

    def rows(
        self, sql: str, namespaces: Sequence[str] | None
    ) -> AbstractContextManager[tuple[duckdb.DuckDBPyConnection, str, str]]:
        """``sql``'s rows as the temp table ``_segment_rows`` on a DuckDB connection, with the
        relations of the members' identities and profiles: (connection, identity_map, profiles)."""
        ...


@dataclass
class OnConnection:
    """A qualification run on a DuckDB connection, the query reading the score and membership
    files itself; ``identity_map`` and ``profiles`` name the relations as of the date."""

    con: duckdb.DuckDBPyConnection
    identity_map: str = "identity_map"
    profiles: str = "profiles"
    dialect = "duckdb"

    def inputs(self, features: str, scores, previous_file) -> tuple[str, dict[str, str]]:
        """The feature query as it is: the query reads the files."""
        return features, {}

    @contextmanager
    def rows(self, sql: str, namespaces) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, str]]:
        """The rows as a temp table on this connection."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE _segment_rows AS " + sql)
        yield self.con, self.identity_map, self.profiles


def qualify_on(
    site: SegmentRows,
    segments: Sequence[Segment],
    features: Any,
    scores: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    as_of: dt.date,
    identity_namespaces: Sequence[str] | None = None,
) -> Qualification:
    """Qualify every segment at ``as_of`` with the query run where ``site`` runs it (either
    engine), and write ``OUT/as_of=<date>/`` atomically (:func:`qualify` on DuckDB)."""
    if not segments:
        raise UserError("no segments to qualify")
    previous = previous_as_of(out_dir, as_of)
    previous_file = partition_dir(out_dir, previous) / MEMBERSHIPS_FILE if previous else None
    features_sql, relations = site.inputs(features, scores, previous_file)
    sql = qualification_sql(segments, features_sql, scores, previous_file, as_of, site.dialect, relations)
    with site.rows(sql, identity_namespaces) as (con, identity_map, profiles):
        return write_qualification(con, segments, out_dir, as_of, identity_namespaces, identity_map, profiles)


def qualify(
    con: duckdb.DuckDBPyConnection,
    segments: Sequence[Segment],
    features_sql: str,
    scores: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    as_of: dt.date,
    identity_namespaces: Sequence[str] | None = None,
    identity_map: str = "identity_map",
    profiles: str = "profiles",
) -> Qualification:
    """Qualify every segment at ``as_of`` and write ``OUT/as_of=<date>/`` atomically.

    ``features_sql``: a query giving one row per profile with ``profile_id``, the columns the
    rules read and ``consent_personalization``. ``scores``: model -> its Parquet files at
    ``as_of`` (:func:`score_files`). With ``identity_namespaces``, also writes
    ``identities.parquet`` from ``identity_map`` and ``profiles`` (relations of the profiles as
    of ``as_of``). Re-running a date replaces it with identical rows.
    """
    site = OnConnection(con, identity_map, profiles)
    return qualify_on(site, segments, features_sql, scores, out_dir, as_of, identity_namespaces)


def _tally(
    con: duckdb.DuckDBPyConnection, segments: Sequence[Segment]
) -> tuple[dict[str, SegmentCounts], int]:
    """Each segment's rows of ``_segment_rows`` by status, and the profiles that are members."""
    counts = {s.name: SegmentCounts(s.name) for s in segments}
    for segment, status, n in con.execute(
        "SELECT segment, status, count(*) FROM _segment_rows GROUP BY ALL"
    ).fetchall():
        setattr(counts[segment], status, int(n))
    member_profiles = con.execute(
        f"SELECT count(DISTINCT profile_id) FROM _segment_rows WHERE status <> '{HELD_BACK}'"
    ).fetchall()[0][0]
    return counts, int(member_profiles)


def write_qualification(
    con: duckdb.DuckDBPyConnection,
    segments: Sequence[Segment],
    out_dir: str | Path,
    as_of: dt.date,
    identity_namespaces: Sequence[str] | None = None,
    identity_map: str = "identity_map",
    profiles: str = "profiles",
) -> Qualification:
    """Write ``OUT/as_of=<date>/`` from the temp table ``_segment_rows`` (the rows of
    :func:`qualification_sql`, from DuckDB or from Spark), then drop it: memberships,
    tallies, identities and the summary, atomically."""
    previous = previous_as_of(out_dir, as_of)
    target = partition_dir(out_dir, as_of)
    policies = {s.name: s.holdout for s in segments if s.holdout is not None}
    try:
        arms = []
        if policies:
            previous_dir = partition_dir(out_dir, previous) if previous else None
            ids = identity_map if identity_namespaces is not None else None
            arms = assign_arms(con, policies, previous_dir, as_of, ids)
        # Arm columns only where a segment has a holdout: other memberships are written as before.
        arm_columns = "".join(f", {c}" for c in ARM_COLUMNS) if policies else ""
        with atomic_path(target, root=out_dir, kind="segments") as tmp:
            tmp.mkdir(parents=True)
            con.execute(f"""
                COPY (SELECT profile_id, segment, status, as_of, qualified_at{arm_columns} FROM _segment_rows
                      WHERE status <> '{HELD_BACK}' ORDER BY segment, profile_id)
                TO {sql_string(str(tmp / MEMBERSHIPS_FILE))} (FORMAT parquet, COMPRESSION zstd)
            """)
            counts, member_profiles = _tally(con, segments)
            identities = (
                _write_identities(con, tmp / IDENTITIES_FILE, identity_namespaces, identity_map, profiles)
                if identity_namespaces is not None
                else None
            )
            result = Qualification(
                as_of=as_of,
                directory=target,
                previous_as_of=previous,
                counts=list(counts.values()),
                rows=sum(c.size + c.exited for c in counts.values()),
                profiles=member_profiles,
                identities=identities,
                identity_namespaces=list(identity_namespaces) if identity_namespaces is not None else None,
                arms=arms,
            )
            previous_fingerprint = stored_fingerprint(con, out_dir, previous) if previous else None
            fingerprint = qualified_fingerprint(con, "_segment_rows")
            write_json(_summary(result, segments, fingerprint, previous_fingerprint), tmp / SUMMARY_FILE)
    finally:
        con.execute("DROP TABLE IF EXISTS _segment_rows")
    result.stale_later = stale_later_dates(con, out_dir, as_of)
    return result


def _summary(
    result: Qualification, segments: Sequence[Segment], fingerprint: str, previous_fingerprint: str | None
) -> dict:
    previous = result.previous_as_of
    return {
        "as_of": str(result.as_of),
        "previous": None
        if previous is None
        else {"as_of": str(previous), "fingerprint": previous_fingerprint},
        "fingerprint": fingerprint,
        "segments": {
            s.name: {"description": s.description, "rule": s.rule.text, "models": list(s.models)}
            for s in segments
        },
        "counts": {
            c.segment: {**{k: getattr(c, k) for k in (*STATUSES, "held_back")}, "size": c.size}
            for c in result.counts
        },
        "rows": result.rows,
        "profiles": result.profiles,
        "identities": result.identities,
        "identity_namespaces": result.identity_namespaces,
        **({"holdout": {a.segment: a.as_dict() for a in result.arms}} if result.arms else {}),
    }
