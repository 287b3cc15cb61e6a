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

import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.core.io import atomic_path, check_output, write_json
from propensity.features.journeys import (
    Paths,
    Runner,
    Step,
    parse_duration,
    parse_steps,
)
from propensity.features.journeys import attribution as attribution_mod
from propensity.features.journeys import funnel as funnel_mod
from propensity.features.journeys import paths as paths_mod
from propensity.features.journeys import touches as touches_mod
from propensity.models.report import ReportSection
from propensity.pipeline.jobs import journey_funnel as funnel_job
from propensity.pipeline.jobs import journey_report as report
from propensity.pipeline.jobs.events import load_events

FACTS_FILE = "journey.json"


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
    # Replaces only its own kind of output (or an empty / missing folder), under its lock.
    with atomic_path(out, kind="journey") as tmp:
        tmp.mkdir(parents=True)
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "journey.html").write_text(html)
        write_json(facts, tmp / FACTS_FILE)


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
    spec = funnel_job.funnel_spec(steps, window, mode, exclude, session_gap)
    out = Path(out)
    check_output(out, "journey")  # refused before the work, not only at the swap
    with journey_data(events, config, as_of) as data:
        since_at = dt.datetime.combine(since, dt.time()) if since else None
        # The first step's channel is read only for a breakdown by it.
        units = funnel_mod.run_funnel(data.runner, spec, data.events, data.end, since_at, by == "channel")
        table = funnel_job.summarise_groups(
            units, spec, funnel_job.breakdown(data.runner, data.profiles, units, by)
        )
        fallout = funnel_job.fallout_next(data.runner, data.events, data.end, units)
        date = data.as_of
    whole = table[table["group"] == "all"]
    facts = {
        "step": "funnel",
        "as_of": str(date),
        "steps": [s.name for s in spec.steps],
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
    html = funnel_job.funnel_page(table, fallout, facts)
    _write(
        out,
        {"funnel_steps": table, "funnel_fallout": fallout, "funnel_units": funnel_job.unit_table(units)},
        html,
        facts,
    )
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
    check_output(out, "journey")  # refused before the work, not only at the swap
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


def _attribution_page(result: attribution_mod.Attribution, facts: dict[str, Any]) -> str:
    """The attribution's HTML page."""
    outcome, by = facts["outcome"], facts["by"]
    wide = result.credit.pivot(index="channel", columns="method", values="credit")[
        list(attribution_mod.METHODS)
    ]
    section = ReportSection(
        f"What drives {outcome}",
        f"{result.paths:,} profiles, {result.conversions:,} conversions ({facts['share_without_touch']:.1%} "
        f"with no touchpoint in the {facts['lookback']} before); credit by {by}. Markov: exact removal "
        "effects of the absorbing chain; Shapley: exact values over channel sets (rate of the paths "
        "within each set). Intervals: bootstrap over profiles.",
        [report.attribution_figure(result.credit, f"Credit for {outcome} by {by}")],
        [("Credit (conversions) per method", wide.reset_index()), ("Data-driven, raw", result.raw)],
    )
    return report.page("Journeys: attribution", f"as of {facts['as_of']}", [section])


def _attribution_metrics(
    result: attribution_mod.Attribution, share: float, seconds: float
) -> dict[str, float]:
    """What MLflow records of an attribution: the headline counts and the data-driven credit."""
    return {
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


def _touch_paths(
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None,
    since: dt.date | None,
    target: Step,
    lookback_seconds: int,
    by: str,
    touchpoints: list[str] | None,
) -> tuple[Paths, dt.datetime, dt.date]:
    """The touchpoint paths (from ``since``, else one lookback before the end), their start and
    the as-of date; none is a user error."""
    with journey_data(events, config, as_of) as data:
        start = (
            dt.datetime.combine(since, dt.time())
            if since
            else data.end - dt.timedelta(seconds=lookback_seconds)
        )
        paths = touches_mod.run_touches(
            data.runner, target, data.events, data.end, start, lookback_seconds, by, touchpoints
        )
        date = data.as_of
    if not paths.n_paths:
        raise UserError(f"attribution: no profile has events between {start.date()} and {date}")
    return paths, start, date


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
    check_output(out, "journey")  # refused before the work, not only at the swap
    paths, start, date = _touch_paths(events, config, as_of, since, target, lookback_seconds, by, touchpoints)
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
    html = _attribution_page(result, facts)
    _write(out, {"attribution": result.credit, "attribution_raw": result.raw}, html, facts)
    seconds = time.perf_counter() - started
    run_id = None
    if track:
        metrics = _attribution_metrics(result, share, seconds)
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
