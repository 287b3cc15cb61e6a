"""The journey jobs: ``funnel``, ``paths`` and ``attribution`` over the stitched profiles.

Each reads the events as the identity graph knew them at ``as_of`` (default: the day after the
last event; only events before it count), on DuckDB or Spark (``config.engine.name``), and
writes a directory atomically: Parquet tables, ``journey.html`` (a report section with its
charts embedded) and ``journey.json`` (what was asked and the headline figures; the file by
which a journey directory is recognised). Each run is logged to the MLflow experiment
``journeys``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, write_json
from propensity.features.journeys import Runner, parse_duration, parse_exclusion, parse_steps
from propensity.features.journeys import attribution as attribution_mod
from propensity.features.journeys import funnel as funnel_mod
from propensity.features.journeys import paths as paths_mod
from propensity.models.report import ReportSection
from propensity.pipeline.jobs import journey_report as report
from propensity.pipeline.jobs.events import load_events

MARKER = "journey.json"


@dataclass
class JourneyData:
    """An engine with the events (and profiles) as of a date."""

    runner: Runner
    events: str
    profiles: str
    as_of: dt.date

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.as_of, dt.time())


@contextmanager
def journey_data(events: str | Path, config: ProjectConfig, as_of: dt.date | None) -> Iterator[JourneyData]:
    """The events as of ``as_of`` on the configured engine (DuckDB or Spark)."""
    loaded = load_events(events, config)
    runner = loaded.journey_runner()
    date = as_of or _data_end(runner)
    sources = loaded.sources(date)
    yield JourneyData(runner, sources.events, sources.profiles, date)


def _data_end(runner: Runner) -> dt.date:
    last = runner.query("SELECT max(timestamp) AS last FROM events").column("last")[0].as_py()
    if last is None:
        raise UserError("no events to analyse")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)


def _check_out(out: Path) -> None:
    """A journey step replaces only its own output (or an empty / missing directory)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UserError(f"{out}: exists and is not a journey output (no {MARKER}); choose another --out")


def _log_mlflow(
    config: ProjectConfig, step: str, tags: dict[str, str], metrics: dict[str, float], out: Path
) -> str:
    import mlflow

    from propensity.models import tracking

    tracking.configure(config)
    mlflow.set_experiment("journeys")
    with mlflow.start_run(run_name=f"{step} at {tags.get('as_of')}") as run:
        mlflow.set_tags({"step": step, "git_commit": tracking.git_commit() or "unknown", **tags})
        # Metric names carry channel values from the data: keep to MLflow's characters.
        mlflow.log_metrics({re.sub(r"[^\w\-. /]", "_", k): float(v) for k, v in metrics.items() if v == v})
        mlflow.log_artifacts(str(out), step)
    return run.info.run_id


def _write(out: Path, tables: dict[str, pd.DataFrame], html: str, facts: dict[str, Any]) -> None:
    _check_out(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "journey.html").write_text(html)
        write_json(facts, tmp / MARKER)


# --- funnel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelResult:
    """A written funnel: per-step figures, fallout destinations and where they are."""

    out: Path
    as_of: dt.date
    steps: pd.DataFrame
    fallout: pd.DataFrame
    units: int
    seconds: float
    run_id: str | None
    facts: dict[str, Any] = field(default_factory=dict)


def _breakdown(data: JourneyData, units: funnel_mod.FunnelUnits, by: str | None) -> pd.DataFrame | None:
    """(unit index, group) pairs: by the first step's channel, a profile attribute at as_of, or
    ``PATH:COLUMN`` of any Parquet keyed by ``profile_id`` (a score partition's ``bucket``, a
    memberships file's ``segment``); a unit in several rows of the file is in each group."""
    if by is None:
        return None
    index = np.arange(len(units.profile_id))
    if by == "channel":
        return pd.DataFrame({"unit": index, "group": units.first_channel})
    runner = data.runner
    if ":" in by and not by.startswith("trait:"):
        path, column = by.rsplit(":", 1)
        source = Path(path)
        files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
        if not files or not all(f.is_file() for f in files):
            raise UserError(f"--by {by}: no Parquet file at {path}")
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        if "profile_id" not in frame or column not in frame:
            raise UserError(f"--by {by}: {path} needs the columns profile_id and {column}")
        mapping = frame[["profile_id", column]].drop_duplicates()
    else:
        column = by.removeprefix("trait:")
        columns = runner.columns(data.profiles)
        if column not in columns:
            raise UserError(
                f"--by {by}: the profiles have no attribute '{column}' "
                f"(they have {', '.join(sorted(columns))})"
            )
        q = runner.dialect.ident
        mapping = runner.query(f"SELECT profile_id, {q(column)} FROM {data.profiles}").to_pandas()
    mapping = mapping.rename(columns={column: "group"})
    mapping["group"] = mapping["group"].astype(object).where(mapping["group"].notna(), "(none)").astype(str)
    joined = pd.DataFrame({"unit": index, "profile_id": units.profile_id}).merge(
        mapping, on="profile_id", how="left"
    )
    joined["group"] = joined["group"].fillna("(none)")
    return joined[["unit", "group"]]


def _summarise_groups(units: funnel_mod.FunnelUnits, spec: funnel_mod.FunnelSpec, pairs: pd.DataFrame | None):
    whole = funnel_mod.summarise(units, spec)
    if pairs is None:
        return whole
    picked = pairs["unit"].to_numpy()
    expanded = funnel_mod.FunnelUnits(
        profile_id=units.profile_id[picked],
        times=units.times[picked],
        reached=units.reached[picked],
        in_progress=units.in_progress[picked],
        first_channel=units.first_channel[picked],
    )
    grouped = funnel_mod.summarise(expanded, spec, pairs["group"].to_numpy(dtype=object))
    return pd.concat([whole, grouped], ignore_index=True)


def run_funnel(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    steps: str,
    window: str = "7d",
    mode: str = "ordered",
    exclude: list[str] | None = None,
    session_gap: str | None = None,
    by: str | None = None,
    as_of: dt.date | None = None,
    since: dt.date | None = None,
    track: bool = True,
) -> FunnelResult:
    """Write a funnel: per step entrants, in progress, fallout, conversion with intervals, time
    between steps, per breakdown group, and where units that fell out went next."""
    started = time.perf_counter()
    parsed = parse_steps(steps)
    spec = funnel_mod.FunnelSpec(
        tuple(parsed),
        parse_duration(window, "--window"),
        mode,
        tuple(parse_exclusion(x, len(parsed)) for x in exclude or []),
        parse_duration(session_gap, "--session-gap") if session_gap else None,
    )
    out = Path(out)
    _check_out(out)
    with journey_data(events, config, as_of) as data:
        since_at = dt.datetime.combine(since, dt.time()) if since else None
        # The first step's channel is read only for a breakdown by it.
        units = funnel_mod.run_funnel(data.runner, spec, data.events, data.end, since_at, by == "channel")
        table = _summarise_groups(units, spec, _breakdown(data, units, by))
        data.runner.register("journey_fallen", funnel_mod.fallen_units(units))
        rows = data.runner.query(
            funnel_mod.fallout_next_sql("journey_fallen", data.events, data.end, data.runner.dialect)
        )
        fallout = funnel_mod.fallout_destinations(rows)
        unit_table = pd.DataFrame(
            {
                "profile_id": units.profile_id,
                "reached_step": units.reached + 1,
                "in_progress": units.in_progress,
                "first_channel": units.first_channel,
            }
        )
        date = data.as_of
    whole = table[table["group"] == "all"]
    facts = {
        "step": "funnel",
        "as_of": str(date),
        "steps": [s.name for s in parsed],
        "window": window,
        "mode": mode,
        "exclude": exclude or [],
        "session_gap": session_gap,
        "by": by,
        "units": len(units.reached),
        "completed": int(whole["entrants"].iloc[-1]) if len(whole) else 0,
        "conversion": float(whole["conversion_from_first"].iloc[-1]) if len(whole) else float("nan"),
        "engine": config.engine.name,
    }
    section = report.funnel_section(
        table,
        fallout,
        "Funnel",
        f"{' > '.join(s.name for s in parsed)}; window {window}, {mode} order"
        + (f", per session (gap {session_gap})" if session_gap else ", per profile")
        + f"; events before {date}. Rates count only units that had their chance; "
        "in-progress units are apart.",
    )
    html = report.page("Journeys: funnel", f"as of {date}", [section])
    _write(out, {"funnel_steps": table, "funnel_fallout": fallout, "funnel_units": unit_table}, html, facts)
    seconds = time.perf_counter() - started
    run_id = None
    if track:
        metrics = {f"entrants_step_{int(r.step)}": r.entrants for r in whole.itertuples()}
        metrics |= {"units": facts["units"], "conversion": facts["conversion"], "seconds": seconds}
        run_id = _log_mlflow(
            config, "funnel", {"as_of": str(date), "steps": " > ".join(facts["steps"])}, metrics, out
        )
    return FunnelResult(out, date, table, fallout, facts["units"], seconds, run_id, facts)


# --- paths ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsResult:
    """Written paths: the most frequent ones and the flow's links."""

    out: Path
    as_of: dt.date
    paths: pd.DataFrame
    links: pd.DataFrame
    profiles: int
    seconds: float
    run_id: str | None
    facts: dict[str, Any] = field(default_factory=dict)


def run_paths(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    event: str,
    direction: str = "to",
    depth: int = 4,
    by: str = "event_type",
    top: int = 20,
    as_of: dt.date | None = None,
    since: dt.date | None = None,
    track: bool = True,
) -> PathsResult:
    """Write the most frequent paths to (or from) the first ``event`` of each profile."""
    started = time.perf_counter()
    target = parse_steps([event])[0]
    if target.limit_seconds is not None:
        raise UserError(f"--event {event!r}: a path's event takes no time limit")
    out = Path(out)
    _check_out(out)
    with journey_data(events, config, as_of) as data:
        since_at = dt.datetime.combine(since, dt.time()) if since else None
        counted = paths_mod.run_paths(
            data.runner, target, data.events, data.end, direction, depth, by, since_at
        )
        date = data.as_of
    table = paths_mod.top_paths(counted, target.name, direction, top)
    links = paths_mod.flow_links(counted, target.name, direction)
    profiles = int(counted["profiles"].sum())
    facts = {
        "step": "paths",
        "as_of": str(date),
        "event": target.name,
        "direction": direction,
        "depth": depth,
        "by": by,
        "profiles": profiles,
        "distinct_paths": len(counted),
        "engine": config.engine.name,
    }
    title = f"Paths {direction} {target.name}"
    figures = [report.flow_figure(links, title)] if len(links) else []
    section = ReportSection(
        title,
        f"{profiles:,} profiles; the {depth} {by} values {'before' if direction == 'to' else 'after'} each "
        f"profile's first {target.name}, repeats collapsed; events before {date}.",
        figures,
        [("Most frequent paths", table)],
    )
    html = report.page("Journeys: paths", f"as of {date}", [section])
    _write(out, {"paths": table, "paths_counted": counted, "paths_links": links}, html, facts)
    seconds = time.perf_counter() - started
    run_id = None
    if track:
        metrics = {"profiles": profiles, "distinct_paths": len(counted), "seconds": seconds}
        run_id = _log_mlflow(
            config, "paths", {"as_of": str(date), "event": target.name, "direction": direction}, metrics, out
        )
    return PathsResult(out, date, table, links, profiles, seconds, run_id, facts)


# --- attribution ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributionResult:
    """Written attribution: credit per channel and method with intervals, and the raw figures."""

    out: Path
    as_of: dt.date
    credit: pd.DataFrame
    raw: pd.DataFrame
    paths: int
    conversions: int
    conversions_without_touch: int
    seconds: float
    run_id: str | None
    facts: dict[str, Any] = field(default_factory=dict)


def run_attribution(
    events: str | Path,
    out: str | Path,
    config: ProjectConfig,
    outcome: str,
    lookback: str = "30d",
    by: str = "channel",
    touchpoints: list[str] | None = None,
    half_life: str = "7d",
    bootstrap: int = 200,
    seed: int = 0,
    as_of: dt.date | None = None,
    since: dt.date | None = None,
    track: bool = True,
) -> AttributionResult:
    """Write credit for ``outcome`` across the touchpoints before it, every method, with intervals."""
    started = time.perf_counter()
    target = parse_steps([outcome])[0]
    lookback_seconds = parse_duration(lookback, "--lookback")
    out = Path(out)
    _check_out(out)
    with journey_data(events, config, as_of) as data:
        start = (
            dt.datetime.combine(since, dt.time())
            if since
            else data.end - dt.timedelta(seconds=lookback_seconds)
        )
        paths = attribution_mod.run_touches(
            data.runner, target, data.events, data.end, start, lookback_seconds, by, touchpoints
        )
        date = data.as_of
    if not paths.n_paths:
        raise UserError(f"attribution: no profile has events between {start.date()} and {date}")
    result = attribution_mod.attribute(paths, parse_duration(half_life, "--half-life"), bootstrap, seed)
    share = result.conversions_without_touch / result.conversions if result.conversions else float("nan")
    facts = {
        "step": "attribution",
        "as_of": str(date),
        "since": str(start.date()),
        "outcome": target.name,
        "lookback": lookback,
        "by": by,
        "paths": result.paths,
        "conversions": result.conversions,
        "conversions_without_touch": result.conversions_without_touch,
        "share_without_touch": share,
        "channels": len(paths.channels),
        "bootstrap": bootstrap,
        "engine": config.engine.name,
    }
    wide = result.credit.pivot(index="channel", columns="method", values="credit")[
        list(attribution_mod.METHODS)
    ]
    section = ReportSection(
        f"What drives {target.name}",
        f"{result.paths:,} profiles, {result.conversions:,} conversions ({share:.1%} with no touchpoint "
        f"in the {lookback} before); credit by {by}. Markov: exact removal effects of the absorbing "
        "chain; Shapley: exact values over channel sets (rate of the paths within each set). "
        "Intervals: bootstrap over profiles.",
        [report.attribution_figure(result.credit, f"Credit for {target.name} by {by}")],
        [("Credit (conversions) per method", wide.reset_index()), ("Data-driven, raw", result.raw)],
    )
    html = report.page("Journeys: attribution", f"as of {date}", [section])
    _write(out, {"attribution": result.credit, "attribution_raw": result.raw}, html, facts)
    seconds = time.perf_counter() - started
    run_id = None
    if track:
        metrics = {
            "paths": result.paths,
            "conversions": result.conversions,
            "share_without_touch": share,
            "seconds": seconds,
            **{
                f"credit_{r.method}_{r.channel}": r.credit
                for r in result.credit.itertuples()
                if r.method in ("markov", "shapley")
            },
        }
        run_id = _log_mlflow(
            config, "attribution", {"as_of": str(date), "outcome": target.name, "by": by}, metrics, out
        )
    return AttributionResult(
        out,
        date,
        result.credit,
        result.raw,
        result.paths,
        result.conversions,
        result.conversions_without_touch,
        seconds,
        run_id,
        facts,
    )
