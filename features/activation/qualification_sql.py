"""The one query of a segment qualification, in DuckDB's or Spark's SQL: every segment's rule
(UNION ALL) over the feature snapshot and the models' scores, against the previous as-of's
memberships (FULL OUTER JOIN), with consent's hold-back
(:mod:`propensity.features.activation.segments` runs it and writes what it returns)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from propensity.features.build.rules import Rule
from propensity.features.sql import sql_ident, sql_string

# The internal status of opted-out profiles that qualify: counted, never written.
HELD_BACK = "held_back"


class Segment(Protocol):
    """What the query reads of a segment (:class:`.segments.Segment`)."""

    name: str
    rule: Rule


def qualification_sql(
    segments: Sequence[Segment],
    features_sql: str,
    scores: Mapping[str, Sequence[str]],
    previous_file: str | Path | None,
    as_of: dt.date,
    dialect: str = "duckdb",
    relations: Mapping[str, str] | None = None,
) -> str:
    """The one query: every segment's rule (UNION ALL) against the previous memberships (FULL
    OUTER JOIN) -> profile_id, segment, status, as_of, qualified_at.

    Opted-out profiles that qualify come back with status ``held_back`` (to be counted, not
    written); an opted-out profile never comes back as ``exited``. ``dialect``: ``duckdb`` or
    ``spark`` (Spark SQL, reading each model's scores and the previous memberships from the
    views ``relations`` names: model -> view, and ``previous`` -> view).
    """
    spark = dialect == "spark"
    relations = relations or {}
    columns, joins = _rule_columns(segments, scores, "`" if spark else '"', relations)
    qualified = "\n        UNION ALL ".join(
        f"SELECT profile_id, {sql_string(s.name)} AS segment, opted_out FROM base WHERE {s.rule.sql(dialect)}"
        for s in segments
    )
    day = f"DATE '{as_of.isoformat()}'"
    previous = _previous_sql(segments, previous_file, relations.get("previous"), spark)
    no_date = _null("DATE", spark)
    # MATERIALIZED: the feature snapshot is computed once however many segments read it.
    return f"""
        WITH base AS {"" if spark else "MATERIALIZED "}(
            SELECT f.profile_id, coalesce(f.consent_personalization = 'n', false) AS opted_out,
                   {", ".join(columns)}
            FROM ({features_sql}) f
            {" ".join(joins)}
        ),
        qualified AS ({qualified}),
        previous AS ({previous}),
        current AS (SELECT profile_id, segment FROM qualified WHERE NOT opted_out)
        SELECT coalesce(c.profile_id, p.profile_id) AS profile_id,
               coalesce(c.segment, p.segment) AS segment,
               CASE WHEN p.profile_id IS NULL THEN 'realized'
                    WHEN c.profile_id IS NULL THEN 'exited' ELSE 'existing' END AS status,
               {day} AS as_of,
               coalesce(p.qualified_at, {day}) AS qualified_at
        FROM current c FULL OUTER JOIN previous p ON c.profile_id = p.profile_id AND c.segment = p.segment
        UNION ALL
        SELECT profile_id, segment, '{HELD_BACK}', {day}, {no_date} FROM qualified WHERE opted_out
    """


def _null(kind: str, spark: bool) -> str:
    """A typed NULL (Spark spells VARCHAR as STRING)."""
    return f"CAST(NULL AS {'STRING' if spark and kind == 'VARCHAR' else kind})"


def _rule_columns(
    segments: Sequence[Segment], scores: Mapping[str, Sequence[str]], quote: str, relations: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """The columns the rules read (features, consent, then each model's score columns as
    ``<model>__<column>``) and the joins of the models' scores."""

    def ident(name: str) -> str:
        return sql_ident(name, quote)

    features = sorted(
        {c for s in segments for c in s.rule.columns if "." not in c} - {"consent_personalization"}
    )
    columns = [f"f.{ident(c)}" for c in (*features, "consent_personalization")]
    joins = []
    for i, model in enumerate(sorted(scores)):
        used = sorted(
            {c.split(".", 1)[1] for s in segments for c in s.rule.columns if c.startswith(model + ".")}
        )
        columns += [f"s{i}.{ident(c)} AS {ident(f'{model}__{c}')}" for c in used]
        files = ", ".join(sql_string(str(f)) for f in scores[model])
        relation = relations.get(model) or f"read_parquet([{files}])"
        joins.append(f"LEFT JOIN {relation} s{i} ON s{i}.profile_id = f.profile_id")
    return columns, joins


def _previous_sql(
    segments: Sequence[Segment], previous_file: str | Path | None, previous_view: str | None, spark: bool
) -> str:
    """The previous as-of's members who stay candidates (realized or existing, not opted out
    now); none when there is no previous as-of."""
    if previous_file is None:
        return (
            f"SELECT {_null('VARCHAR', spark)} AS profile_id, {_null('VARCHAR', spark)} AS segment, "
            f"{_null('DATE', spark)} AS qualified_at LIMIT 0"
        )
    names = ", ".join(sql_string(s.name) for s in segments)
    return f"""SELECT profile_id, segment, qualified_at
            FROM {previous_view or f"read_parquet({sql_string(str(previous_file))})"}
            WHERE status IN ('realized', 'existing') AND segment IN ({names})
              AND profile_id NOT IN (SELECT profile_id FROM base WHERE opted_out)"""
