"""The ``funnel``, ``paths`` and ``attribution`` commands, added to the CLI by :func:`register`.

Each writes a directory (Parquet tables, ``journey.html``, ``journey.json``), prints the
headline table, or with ``--json`` one JSON object with the run's figures. Exit code 2 with
one line on a user error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from propensity.pipeline.cli.options import (
    AsOfOption,
    ConfigOption,
    EngineOption,
    EventsOption,
    console,
    events_path,
    load_config_for,
    parse_date,
    user_errors,
)

if TYPE_CHECKING:  # the jobs load lazily, when a command runs
    from propensity.pipeline.jobs.journeys import AttributionResult, FunnelResult

SinceOption = Annotated[str | None, typer.Option("--since", help="Only events from this date, YYYY-MM-DD.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object with the run's figures.")]
TrackOption = Annotated[
    bool, typer.Option("--track/--no-track", help="Log the run to MLflow (experiment journeys).")
]


def _out(out: Path | None, config, name: str) -> Path:
    return out or Path(config.work_dir) / "journeys" / name


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _print_json(facts: dict[str, Any], **more: Any) -> None:
    typer.echo(json.dumps({k: _clean(v) for k, v in {**facts, **more}.items()}, sort_keys=True, default=str))


def _rate(value: float) -> str:
    return "" if value != value else f"{value:.1%}"


def _print_funnel(result: FunnelResult, as_json: bool) -> None:
    """The funnel as JSON facts or as a table."""
    if as_json:
        whole = result.steps[result.steps["group"] == "all"]
        _print_json(
            result.facts, out=str(result.out), seconds=result.seconds, entrants=whole["entrants"].tolist()
        )
        return
    table = Table(title=f"Funnel as of {result.as_of} ({result.units:,} units)")
    for column in (
        "step",
        "entrants",
        "in progress",
        "fallout",
        "from previous",
        "from first",
        "median time",
    ):
        table.add_column(column, justify="right" if column != "step" else "left")
    for row in result.steps[result.steps["group"] == "all"].itertuples():
        median = "" if row.median_seconds != row.median_seconds else f"{row.median_seconds / 3600:.1f} h"
        table.add_row(
            f"{row.step}. {row.name}",
            f"{row.entrants:,}",
            f"{row.in_progress:,}",
            f"{row.fallout:,}",
            _rate(row.conversion_from_previous),
            _rate(row.conversion_from_first),
            median,
        )
    console.print(table)
    console.print(f"written to {result.out}")


def _print_attribution(result: AttributionResult, outcome: str, by: str, as_json: bool) -> None:
    """The credit as JSON facts or as a table (channels by method)."""
    if as_json:
        credit = {
            m: dict(zip(g["channel"], g["credit"].round(3), strict=True))
            for m, g in result.credit.groupby("method")
        }
        _print_json(result.facts, out=str(result.out), seconds=result.seconds, credit=credit)
        return
    wide = result.credit.pivot(index="channel", columns="method", values="credit")
    table = Table(
        title=f"Credit for {outcome}: {result.conversions:,} conversions of {result.paths:,} profiles, "
        f"{result.conversions_without_touch:,} without a touchpoint"
    )
    table.add_column(by)
    methods = ["first", "last", "linear", "time_decay", "position", "markov", "shapley"]
    for method in methods:
        table.add_column(method, justify="right")
    for channel, row in wide.iterrows():
        table.add_row(str(channel), *(f"{row[m]:,.1f}" for m in methods))
    console.print(table)
    console.print(f"written to {result.out}")


@user_errors
def funnel(
    steps: Annotated[
        str, typer.Argument(help="Steps: 'product_view[category=yoga] > add_to_cart@1h > purchase'.")
    ],
    window: Annotated[
        str, typer.Option("--window", help="Time to complete every step (30m, 2h, 7d).")
    ] = "7d",
    mode: Annotated[
        str, typer.Option("--mode", help="ordered (default), strict (nothing between steps) or any.")
    ] = ("ordered"),
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", help="An event that breaks the funnel: EVENT or EVENT:FROM-TO (steps from 1)."
        ),
    ] = None,
    session_gap: Annotated[
        str | None,
        typer.Option("--session-gap", help="Count per session, split at this much inactivity (30m)."),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="Breakdown: channel, a profile attribute, or PARQUET:COLUMN keyed by profile_id."
        ),
    ] = None,
    events: EventsOption = None,
    as_of: AsOfOption = None,
    since: SinceOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default WORK_DIR/journeys/funnel).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    as_json: JsonOption = False,
    track: TrackOption = True,
) -> None:
    """Funnel: entrants, conversion, fallout, time between steps and where the fallen went next."""
    from propensity.pipeline.jobs import journeys

    cfg = load_config_for(config, engine)
    with console.status("computing the funnel"):
        result = journeys.run_funnel(
            events_path(events, cfg),
            _out(out, cfg, "funnel"),
            cfg,
            steps,
            window,
            mode,
            exclude,
            session_gap,
            by,
            parse_date(as_of),
            parse_date(since, "--since"),
            track,
        )
    _print_funnel(result, as_json)


@user_errors
def paths(
    event: Annotated[
        str, typer.Argument(help="The event paths lead to (or from): 'purchase[category=yoga]'.")
    ],
    direction: Annotated[str, typer.Option("--direction", help="to (default) or from the event.")] = "to",
    depth: Annotated[int, typer.Option("--depth", help="Nodes per path.")] = 4,
    by: Annotated[str, typer.Option("--by", help="Follow event_type (default) or channel.")] = "event_type",
    top: Annotated[int, typer.Option("--top", help="How many paths to list.")] = 20,
    events: EventsOption = None,
    as_of: AsOfOption = None,
    since: SinceOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default WORK_DIR/journeys/paths).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    as_json: JsonOption = False,
    track: TrackOption = True,
) -> None:
    """The most frequent paths to (or from) an event, as a table and a flow chart."""
    from propensity.pipeline.jobs import journeys

    cfg = load_config_for(config, engine)
    with console.status("counting paths"):
        result = journeys.run_paths(
            events_path(events, cfg),
            _out(out, cfg, "paths"),
            cfg,
            event,
            direction,
            depth,
            by,
            top,
            parse_date(as_of),
            parse_date(since, "--since"),
            track,
        )
    if as_json:
        _print_json(
            result.facts,
            out=str(result.out),
            seconds=result.seconds,
            top=result.paths.head(5)["path"].tolist(),
        )
        return
    table = Table(title=f"Paths {direction} {event} ({result.profiles:,} profiles)")
    table.add_column("path")
    table.add_column("profiles", justify="right")
    table.add_column("share", justify="right")
    for row in result.paths.itertuples():
        table.add_row(row.path, f"{row.profiles:,}", _rate(row.share))
    console.print(table)
    console.print(f"written to {result.out}")


@user_errors
def attribution(
    outcome: Annotated[str, typer.Argument(help="The outcome event: 'purchase[category=yoga]'.")],
    lookback: Annotated[
        str, typer.Option("--lookback", help="Touchpoints this long before the outcome.")
    ] = "30d",
    by: Annotated[
        str, typer.Option("--by", help="Credit channel (default) or campaign (any event column).")
    ] = "channel",
    touchpoints: Annotated[
        list[str] | None,
        typer.Option("--touchpoint", help="Event types that count as touchpoints (default: all)."),
    ] = None,
    half_life: Annotated[str, typer.Option("--half-life", help="Time-decay half-life.")] = "7d",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples for intervals (0: none).")
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    events: EventsOption = None,
    as_of: AsOfOption = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Conversions from this date (default: --lookback before --as-of)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default WORK_DIR/journeys/attribution).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    as_json: JsonOption = False,
    track: TrackOption = True,
) -> None:
    """Credit for an outcome across touchpoints: rules, exact Markov removal effect and Shapley values."""
    from propensity.pipeline.jobs import journeys

    cfg = load_config_for(config, engine)
    with console.status("attributing"):
        result = journeys.run_attribution(
            events_path(events, cfg),
            _out(out, cfg, "attribution"),
            cfg,
            outcome,
            lookback,
            by,
            touchpoints,
            half_life,
            bootstrap,
            seed,
            parse_date(as_of),
            parse_date(since, "--since"),
            track,
        )
    _print_attribution(result, outcome, by, as_json)


def register(app: typer.Typer) -> None:
    """Add ``funnel``, ``paths`` and ``attribution`` to the ``propensity`` app."""
    app.command("funnel")(funnel)
    app.command("paths")(paths)
    app.command("attribution")(attribution)
