"""The explain job: "why this score?" for one profile, including why it is not scored at all.

DuckDB only, whatever the config's engine: one profile's features are built from its own
events, which one machine does in milliseconds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.rules import conjuncts
from propensity.features.build.sql_compiler import snapshot_sql
from propensity.features.connection import relation_columns
from propensity.features.duckdb import DuckDBEngine
from propensity.features.sql import sql_string
from propensity.models.scoring import score_batch
from propensity.pipeline.jobs.score import Prepared, prepare


@dataclass(frozen=True)
class Explanation:
    """One profile's score and factors, or why it is not scored."""

    model: str
    version: str
    profile_id: str
    as_of: dt.date
    eligible: bool
    failed_conditions: list[str] = field(default_factory=list)  # population parts it fails
    values: dict[str, Any] = field(default_factory=dict)  # the columns those parts read
    probability: float | None = None
    score: int | None = None
    bucket: str | None = None
    factors: list[dict[str, Any]] = field(default_factory=list)


def explain_profile(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    profile_id: str,
    as_of: dt.date | None = None,
    alias: str | None = None,
    version: str | None = None,
    factors: int | None = None,
) -> Explanation:
    """The score, bucket and factors of one profile, or which population conditions it fails."""
    prep = prepare(model_name, events, config, as_of, alias, version, DuckDBEngine(config))
    row = _profile_row(prep, profile_id)
    failed, values = _failed_conditions(prep, row)
    if failed:
        return Explanation(
            model_name, prep.version, profile_id, prep.as_of, False, failed_conditions=failed, values=values
        )
    k = config.scoring.factors if factors is None else factors
    table = score_batch(
        prep.model,
        row,
        model_name=model_name,
        model_version=prep.version,
        as_of=prep.as_of,
        factors=k,
        scored_at=dt.datetime.now(dt.UTC),
    ).to_pylist()[0]
    return Explanation(
        model_name,
        prep.version,
        profile_id,
        prep.as_of,
        True,
        values=values,
        probability=table["probability"],
        score=table["score"],
        bucket=table["bucket"],
        factors=table["factors"],
    )


def _profile_row(prep: Prepared, profile_id: str) -> pd.DataFrame:
    """The profile's feature row at the as-of, or a UserError saying why it has none."""
    con = prep.loaded.con
    where = f"profile_id = {sql_string(profile_id)}"
    sources = prep.loaded.sources(prep.as_of)
    # Only this profile's events (as attributed at as_of): one profile's features, not everyone's.
    features_sql = snapshot_sql(
        prep.fs,
        prep.as_of,
        relation_columns(con, sources.profiles),
        events=f"(SELECT * FROM {sources.events} WHERE {where})",
        profiles=sources.profiles,
        ordered=False,
    )
    row = con.execute(features_sql).df()
    if row.empty:
        known = con.execute(f"SELECT count(*) FROM profiles WHERE {where}").fetchall()[0][0]
        raise UserError(
            f"profile '{profile_id}' "
            + (
                f"has no events in the {prep.fs.lookback_days} days before {prep.as_of}"
                if known
                else "is not in these events (profile ids come from `propensity ingest`)"
            )
        )
    return row


def _failed_conditions(prep: Prepared, row: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """The population's parts the row fails, and the values of the columns the population reads."""
    con = prep.loaded.con
    con.register("_explained", row)
    try:
        failed = [
            part.text
            for part in conjuncts(prep.population)
            if not con.execute(f"SELECT count(*) FROM _explained WHERE {part.sql('duckdb')}").fetchall()[0][0]
        ]
    finally:
        con.unregister("_explained")
    values = {c: _plain(row[c].iloc[0]) for c in sorted(prep.population.columns) if c in row.columns}
    return failed, values


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return None if pd.isna(value) else value
