"""The measure job: after a campaign's horizon, what its targeted members did that the holdout did not.

Members and arms come from the memberships at ``as_of`` (``segments`` with a ``holdout``; see
:mod:`propensity.features.activation.holdout`): realized and existing members of each arm; with
``destination``, from the arms that destination's export recorded beside them (a destination
with a ``holdout``).
Outcomes are the outcome events (``event_type``, optionally of one ``category``) in
``[as_of, as_of + horizon_days)``, each counted for the member whose identity at ``as_of`` it
carries (first namespace in the project's precedence): ``converted`` (at least one) and
``revenue`` (their sum). Pre-period covariates for the regression adjustment are features of
the snapshot at ``as_of`` (strictly before the campaign). Breakdowns: any snapshot column (a
trait such as ``loyalty_tier``) or ``<model>.<column>`` of the score partition at ``as_of``
(``upsell.bucket``).

Figures per segment and breakdown group: :func:`propensity.models.lift.measure_lift`. Outcome
events whose identities belong to members of both arms are counted as contamination, beside
the qualification's own counts (merges across arms, shared identities). Written atomically to
``OUT/as_of=<date>/``: ``lift.parquet`` (one row per segment, group and figure) and
``lift.json`` (the same, plus sizes, settings and contamination), ``lift.html`` (charts of
both arms and of the raw and adjusted lifts; :mod:`.measure_report`), and logged to MLflow (the
``measure`` experiment: whole-segment figures as metrics, both files as artifacts).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, write_json
from propensity.core.power import PowerPlan, plan
from propensity.features.activation import membership_store as store
from propensity.features.activation.holdout import destination_arms_dir
from propensity.features.activation.segments import score_partition
from propensity.features.sql import sql_ident, sql_string
from propensity.models import tracking
from propensity.models.lift import Arms, measure_lift
from propensity.pipeline.jobs import measure_report
from propensity.pipeline.jobs.config_files import load_segments
from propensity.pipeline.jobs.events import feature_set, load_events

DEFAULT_COVARIATES = ("purchase_count_90d", "revenue_sum_90d", "revenue_sum_365d")
ALL = "all"  # the breakdown group of a whole segment


@dataclass(frozen=True)
class MeasureRequest:
    """What to measure: the memberships date the campaign went out from and its outcome."""

    as_of: dt.date
    horizon_days: int = 28
    event_type: str = "purchase"
    category: str | None = None
    covariates: tuple[str, ...] | None = None  # None: the DEFAULT_COVARIATES the features have
    breakdowns: tuple[str, ...] = ()
    resamples: int = 1000
    seed: int = 0
    cost: float | None = None  # what the campaign cost per segment (return on spend)
    segments: tuple[str, ...] | None = None  # None: every segment with arms
    destination: str | None = None  # the arms of this destination's holdout, not the segments'


@dataclass
class MeasureResult:
    as_of: dt.date
    out: Path
    table: pd.DataFrame
    sizes: dict[str, dict[str, int]]
    contamination: dict[str, dict[str, int]]
    covariates: list[str] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run the figures were logged to


def lift_table(
    members: pd.DataFrame,
    covariates: list[str],
    breakdowns: list[str],
    resamples: int = 1000,
    seed: int = 0,
    cost: float | None = None,
) -> pd.DataFrame:
    """Figures of every segment (and breakdown group) of ``members`` (segment, arm, converted,
    revenue, the covariates and breakdown columns): one row per segment, breakdown, group and
    figure, with interval, p-value and the arms' sizes."""
    rows = []
    for segment, part in members.groupby("segment", sort=True):
        groups = [("", ALL, part)]
        for column in breakdowns:
            values = part[column].astype("string").fillna("(missing)")
            groups += [(column, str(v), g) for v, g in part.groupby(values, sort=True)]
        for breakdown, group, frame in groups:
            targeted = (frame["arm"] == "targeted").to_numpy()
            n_t, n_h = int(targeted.sum()), int((~targeted).sum())
            if n_t == 0 or n_h == 0:
                continue
            x = frame[covariates].to_numpy(np.float64) if covariates else None
            arms = Arms(targeted, frame["converted"].to_numpy(), frame["revenue"].to_numpy(), x)
            for e in measure_lift(arms, resamples, seed, cost if breakdown == "" else None):
                rows.append((segment, breakdown, group, *asdict(e).values(), n_t, n_h))
    columns = ["segment", "breakdown", "group", "metric", "estimate", "low", "high", "p_value"]
    return pd.DataFrame(rows, columns=[*columns, "targeted", "holdout"])


def _members(memberships: Path, segments: tuple[str, ...] | None) -> pd.DataFrame:
    if not memberships.is_file():
        raise UserError(
            f"{memberships}: missing; declare `holdout:` on the destination and run `propensity export` "
            f"at this date first"
        )
    if not store.has_arms(memberships):
        raise UserError(
            f"{memberships}: no segment has a holdout (no `arm` column); declare `holdout:` first"
        )
    frame = pd.read_parquet(memberships, columns=["profile_id", "segment", "status", "arm"])
    frame = frame[frame["arm"].notna() & frame["status"].isin(["realized", "existing"])]
    if segments:
        missing = sorted(set(segments) - set(frame["segment"]))
        if missing:
            raise UserError(f"{memberships}: no holdout members in segment(s) {', '.join(missing)}")
        frame = frame[frame["segment"].isin(segments)]
    return frame.drop(columns="status").reset_index(drop=True)


def _outcomes_sql(request: MeasureRequest, namespaces: list[str]) -> str:
    """The outcome events in the horizon with their identity values (one column per namespace)."""
    start = f"TIMESTAMP '{request.as_of} 00:00:00'"
    end = f"TIMESTAMP '{request.as_of + dt.timedelta(days=request.horizon_days)} 00:00:00'"
    condition = f"event_type = {sql_string(request.event_type)}"
    if request.category:
        condition += f" AND product_category = {sql_string(request.category.lower())}"
    ids = ", ".join(f"CAST({sql_ident(ns)} AS VARCHAR) AS {sql_ident(ns)}" for ns in namespaces)
    return f"""SELECT coalesce(revenue, 0.0) AS revenue, {ids} FROM events
               WHERE {condition} AND timestamp >= {start} AND timestamp < {end}"""


def attribute_outcomes(
    outcomes: pd.DataFrame, identities: pd.DataFrame, members: pd.DataFrame, namespaces: list[str]
) -> tuple[pd.DataFrame, int]:
    """Per member: converted and revenue from ``outcomes`` (revenue + one column per namespace),
    each event counted for the member of its first namespace (precedence; then the smallest
    profile id, so a shared value always goes the same way) among ``identities``
    (profile_id, namespace, value at as_of); and the number of events whose identities belong
    to members of both arms (contamination)."""
    con = duckdb.connect()
    try:
        con.register("o", outcomes)
        con.register("ids", identities)
        con.register("m", members[["profile_id", "segment", "arm"]])
        candidates = " UNION ALL ".join(
            f"SELECT event, revenue, {rank} AS rank, {sql_string(ns)} AS namespace, {sql_ident(ns)} AS value "
            f"FROM ev WHERE {sql_ident(ns)} IS NOT NULL"
            for rank, ns in enumerate(namespaces)
        )
        con.execute(f"""
            CREATE TEMP TABLE placed AS
            WITH ev AS (SELECT row_number() OVER () AS event, * FROM o),
            c AS ({candidates})
            SELECT c.event, c.revenue, c.rank, i.profile_id
            FROM c JOIN ids i ON i.namespace = c.namespace AND i.value = c.value
        """)
        contaminated = con.execute("""
            SELECT count(*) FROM (
                SELECT p.event FROM placed p JOIN m USING (profile_id)
                GROUP BY p.event, m.segment HAVING count(DISTINCT m.arm) > 1
            )
        """).fetchall()[0][0]
        per_member = con.execute("""
            WITH first AS (
                SELECT event, any_value(revenue) AS revenue,
                       arg_min(profile_id, lpad(CAST(rank AS VARCHAR), 3, '0') || profile_id) AS profile_id
                FROM placed GROUP BY event
            )
            SELECT profile_id, true AS converted, sum(revenue) AS revenue FROM first GROUP BY profile_id
        """).df()
    finally:
        con.close()
    joined = members.merge(per_member, on="profile_id", how="left")
    joined["converted"] = joined["converted"].fillna(False).astype(bool)
    joined["revenue"] = joined["revenue"].fillna(0.0)
    return joined, int(contaminated)


def measure(
    events: str | Path,
    memberships_dir: str | Path | None,
    out_dir: str | Path,
    request: MeasureRequest,
    config: ProjectConfig,
    scores_dir: str | Path | None = None,
    arms_file: str | Path | None = None,
) -> MeasureResult:
    """Measure every holdout segment at ``request.as_of`` (see the module doc) and write it.

    ``arms_file``: instead of memberships, a campaign run elsewhere: a CSV or Parquet file with
    ``arm`` (targeted / holdout), an identity column named after a namespace (``crm_id``, ...)
    and optionally ``segment``; each row is mapped to its profile at ``as_of``."""
    loaded = load_events(events, config)
    horizon_end = request.as_of + dt.timedelta(days=request.horizon_days)
    if loaded.data_end() < horizon_end:
        raise UserError(
            f"{events}: data ends {loaded.data_end()}, before the horizon of the campaign at {request.as_of} "
            f"ends ({horizon_end}, {request.horizon_days} days); measure after the horizon"
        )
    if arms_file is not None:
        members, identities, contamination = members_from_arms_file(loaded, arms_file, request.as_of, config)
        namespaces = list(config.identity.namespaces)
    else:
        if memberships_dir is None:
            raise UserError("measure needs memberships (--memberships) or an arms file (--arms)")
        members, identities, contamination, namespaces = _stored_arms(memberships_dir, request, config)
    outcomes = pd.DataFrame(loaded.rows(_outcomes_sql(request, namespaces)), columns=["revenue", *namespaces])
    members, contaminated = attribute_outcomes(outcomes, identities, members, namespaces)
    members, covariates = _with_features(loaded, config, members, request, scores_dir)
    table = lift_table(
        members, covariates, list(request.breakdowns), request.resamples, request.seed, request.cost
    )
    sizes = {
        s: {"targeted": int((g["arm"] == "targeted").sum()), "holdout": int((g["arm"] == "holdout").sum())}
        for s, g in members.groupby("segment")
    }
    for segment in sizes:
        contamination.setdefault(segment, {})["outcomes_shared_across_arms"] = contaminated
    result = MeasureResult(
        request.as_of, Path(out_dir) / f"as_of={request.as_of}", table, sizes, contamination
    )
    result.covariates = covariates
    _write(result, request)
    result.run_id = _log_run(result, request, config, "arms file" if arms_file is not None else "memberships")
    return result


def _stored_arms(
    memberships_dir: str | Path, request: MeasureRequest, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, int]], list[str]]:
    """The arms written by ``segment`` at ``request.as_of`` (or by the export to
    ``request.destination``): members, their identities, each segment's contamination counts
    and the identity namespaces."""
    partition = store.partition_dir(memberships_dir, request.as_of)
    summary = store.read_summary(memberships_dir, request.as_of)
    arms_from = partition / store.MEMBERSHIPS_FILE
    if request.destination is not None:
        arms_from = partition / destination_arms_dir(request.destination) / "arms.parquet"
        summary = {**summary, **store.read_summary_file(arms_from.parent)}
    members = _members(arms_from, request.segments)
    namespaces = list(summary.get("identity_namespaces") or config.identity.namespaces)
    identities = pd.read_parquet(
        partition / store.IDENTITIES_FILE, columns=["profile_id", "namespace", "value"]
    )
    contamination = {
        s: {k: int(a.get(k, 0)) for k in ("merged_across_arms", "shared_identities")}
        for s, a in (summary.get("holdout") or {}).items()
        if s in set(members["segment"])
    }
    return members, identities, contamination, namespaces


def _log_run(result: MeasureResult, request: MeasureRequest, config: ProjectConfig, source: str) -> str:
    """The measure run in MLflow's ``measure`` experiment: every segment's whole-group figures
    (``<segment>.<figure>`` with ``_low``/``_high``), sizes, and the written files."""
    tracking.configure(config)
    mlflow.set_experiment("measure")
    whole = result.table[result.table["breakdown"] == ""]
    metrics = {}
    for row in whole.itertuples():
        for suffix, value in (("", row.estimate), ("_low", row.low), ("_high", row.high)):
            if np.isfinite(value):
                metrics[f"{row.segment}.{row.metric}{suffix}"] = float(value)
    for segment, sizes in result.sizes.items():
        metrics |= {f"{segment}.{arm}_members": float(n) for arm, n in sizes.items()}
    with mlflow.start_run(run_name=f"measure at {result.as_of}") as run:
        mlflow.set_tags(
            {
                "step": "measure",
                "as_of": str(result.as_of),
                "horizon_days": str(request.horizon_days),
                "arms_from": source,
                "git_commit": tracking.git_commit() or "unknown",
            }
        )
        mlflow.log_metrics(metrics)
        for name in ("lift.parquet", "lift.json", "lift.html"):
            mlflow.log_artifact(str(result.out / name), "measure")
        return run.info.run_id


def members_from_arms_file(
    loaded, path: str | Path, as_of: dt.date, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, int]]]:
    """(members, their identities, contamination) of a campaign's own arms file, mapped to the
    profiles at ``as_of``. A profile reached by rows of both arms (a shared identity, or two
    people stitched into one) is counted and left out: it belongs to neither comparison."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such arms file")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    id_columns = [ns for ns in config.identity.namespaces if ns in frame.columns]
    bad = sorted(set(frame.get("arm", pd.Series(["(missing)"])).dropna()) - {"targeted", "holdout"})
    if not id_columns or "arm" not in frame.columns or bad:
        raise UserError(
            f"{path}: needs an `arm` column of targeted/holdout (found {bad or 'none'}) and an identity "
            f"column named after a namespace ({', '.join(config.identity.namespaces)})"
        )
    namespace = id_columns[0]
    frame = frame.assign(segment=frame["segment"] if "segment" in frame.columns else "campaign")
    identity_map = loaded.sources(as_of).identity_map
    listed = ", ".join(sql_string(ns) for ns in config.identity.namespaces)
    identities = pd.DataFrame(
        loaded.rows(
            f"SELECT profile_id, namespace, CAST(value AS VARCHAR) FROM {identity_map} "
            f"WHERE namespace IN ({listed})"
        ),
        columns=["profile_id", "namespace", "value"],
    )
    keys = identities[identities["namespace"] == namespace][["profile_id", "value"]]
    mapped = frame.astype({namespace: str}).merge(keys, left_on=namespace, right_on="value")
    arms = mapped.groupby(["segment", "profile_id"])["arm"].agg(["nunique", "first"]).reset_index()
    both = arms[arms["nunique"] > 1].groupby("segment").size()
    members = arms[arms["nunique"] == 1].rename(columns={"first": "arm"})[["profile_id", "segment", "arm"]]
    contamination = {
        s: {
            "merged_across_arms": int(both.get(s, 0)),
            "unmatched_rows": int(len(g) - g[namespace].isin(keys["value"]).sum()),
        }
        for s, g in frame.groupby("segment")
    }
    return (
        members.reset_index(drop=True),
        identities[identities["profile_id"].isin(members["profile_id"])],
        contamination,
    )


def _with_features(loaded, config: ProjectConfig, members: pd.DataFrame, request: MeasureRequest, scores_dir):
    """Members with their covariates and breakdown columns (snapshot at as_of, scores at as_of)."""
    fs = feature_set(loaded, config, before=request.as_of)
    names = set(fs.names(False))
    wanted = (
        list(request.covariates)
        if request.covariates is not None
        else [c for c in DEFAULT_COVARIATES if c in names]
    )
    traits = [b for b in request.breakdowns if "." not in b]
    chosen = fs.select(include=sorted((set(wanted + traits) & names) | {"is_known"}))
    snapshot = loaded.frame(loaded.snapshot(chosen, request.as_of))
    # Breakdowns may also be profile attributes (loyalty_tier), which every snapshot carries.
    unknown = sorted(set(wanted + traits) - set(snapshot.columns))
    if unknown:
        raise UserError(
            f"measure: unknown feature(s) {', '.join(unknown)} (covariates name features; breakdowns "
            f"features, profile attributes or <model>.<column>)"
        )
    snapshot = snapshot[["profile_id", *sorted(set(wanted + traits))]]
    members = members.merge(snapshot, on="profile_id", how="left")
    for column in wanted:
        members[column] = pd.to_numeric(members[column], errors="coerce").fillna(0.0)
    for breakdown in request.breakdowns:
        if "." in breakdown:
            model, column = breakdown.split(".", 1)
            files = score_partition(
                scores_dir or Path(config.work_dir) / "scores", model, request.as_of, "measure"
            )
            scores = pd.read_parquet(files, columns=["profile_id", column]).rename(
                columns={column: breakdown}
            )
            members = members.merge(scores, on="profile_id", how="left")
    return members, wanted


def _write(result: MeasureResult, request: MeasureRequest) -> None:
    with atomic_path(result.out, root=result.out.parent, kind="measure") as tmp:
        tmp.mkdir(parents=True)
        result.table.to_parquet(tmp / "lift.parquet", index=False)
        section = measure_report.lift_section(result.table, result.sizes, result.contamination)
        (tmp / "lift.html").write_text(measure_report.page(str(result.as_of), section))
        write_json(
            {
                "as_of": str(result.as_of),
                "request": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(request).items()},
                "covariates": result.covariates,
                "sizes": result.sizes,
                "contamination": result.contamination,
                "figures": result.table.replace({np.nan: None}).to_dict(orient="records"),
            },
            tmp / "lift.json",
        )


def plan_holdouts(
    memberships_dir: str | Path, as_of: dt.date, segments_path: str | Path, expected_lift: float | None = None
) -> dict[str, PowerPlan]:
    """Before a campaign: what each holdout segment's split at ``as_of`` can detect (and the holdout
    an ``expected_lift`` needs), from the segment's holdout share and baseline rate."""
    definitions = {d.name: d for d in load_segments(segments_path).segments}
    summary = store.read_summary(memberships_dir, as_of)
    plans = {}
    for name, counts in sorted(summary["counts"].items()):
        definition = definitions.get(name)
        if definition is None or definition.holdout is None:
            continue
        plans[name] = plan(counts["size"], definition.holdout, definition.baseline_rate, expected_lift)
    if not plans:
        raise UserError(f"{segments_path}: no segment at {as_of} declares a holdout")
    return plans
