"""The ``measure`` command: lift of holdout segments after a campaign (or, with ``--plan``, the
power of their holdouts before it), added to the CLI by :func:`register`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from propensity.core.errors import UserError
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

# Figures shown on the terminal (lift.parquet has them all, with every breakdown group).
_SHOWN = (
    "targeted_rate",
    "holdout_rate",
    "absolute_lift",
    "adjusted_absolute_lift",
    "relative_lift",
    "incremental_conversions",
    "incremental_revenue",
    "adjusted_incremental_revenue",
    "return_on_spend",
)


# The command's own options (the shared ones are in pipeline.cli.options).
_Memberships = Annotated[
    Path | None, typer.Option("--memberships", help="Memberships directory (default: WORK_DIR/segments).")
]
_Out = Annotated[Path | None, typer.Option("--out", help="Output (default: WORK_DIR/measure).")]
_Horizon = Annotated[int, typer.Option("--horizon-days", min=1, help="Days after --as-of counted.")]
_EventType = Annotated[str, typer.Option("--event-type", help="The outcome event.")]
_Category = Annotated[str | None, typer.Option("--category", help="Only outcomes of this category.")]
_Covariates = Annotated[
    list[str] | None, typer.Option("--covariate", help="Pre-period feature for the adjustment (repeat).")
]
_By = Annotated[
    list[str] | None, typer.Option("--by", help="Breakdown: a feature or <model>.<column> (repeat).")
]
_Segments = Annotated[list[str] | None, typer.Option("--segment", help="Only these segments (repeat).")]
_Resamples = Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples.")]
_Cost = Annotated[float | None, typer.Option("--cost", min=0, help="Campaign cost: adds return on spend.")]
_Scores = Annotated[Path | None, typer.Option("--scores", help="Score partitions (for --by model.column).")]
_Destination = Annotated[
    str | None,
    typer.Option("--destination", help="The holdout this destination's export drew, not the segments'."),
]
_Arms = Annotated[
    Path | None,
    typer.Option(
        "--arms", help="A campaign's own arms (CSV/Parquet: arm + an identity column), not memberships."
    ),
]
_Plan = Annotated[bool, typer.Option("--plan", help="Before the campaign: the power of each holdout.")]
_ExpectedLift = Annotated[
    float | None, typer.Option("--expected-lift", help="With --plan: the absolute lift hoped for.")
]
_SegmentsFile = Annotated[Path, typer.Option("--segments", help="Segment definitions (for --plan).")]


@user_errors
def measure(
    as_of: AsOfOption = None,
    events: EventsOption = None,
    memberships: _Memberships = None,
    out: _Out = None,
    horizon_days: _Horizon = 28,
    event_type: _EventType = "purchase",
    category: _Category = None,
    covariate: _Covariates = None,
    by: _By = None,
    segment: _Segments = None,
    resamples: _Resamples = 1000,
    cost: _Cost = None,
    scores: _Scores = None,
    destination: _Destination = None,
    arms: _Arms = None,
    plan: _Plan = False,
    expected_lift: _ExpectedLift = None,
    segments_file: _SegmentsFile = Path("configs/segments.yaml"),
    config: ConfigOption = None,
    engine: EngineOption = None,
) -> None:
    """Lift of each holdout segment at --as-of: targeted vs holdout, raw and adjusted, with intervals."""
    from propensity.pipeline.jobs import measure as jobs

    cfg = load_config_for(config, engine)
    day = parse_date(as_of)
    if day is None:
        raise UserError("measure needs --as-of: the memberships date the campaign went out from")
    work = Path(cfg.work_dir)
    memberships_dir = memberships or work / "segments"
    if plan:
        _print_plans(jobs.plan_holdouts(memberships_dir, day, segments_file, expected_lift))
        return
    request = jobs.MeasureRequest(
        as_of=day,
        horizon_days=horizon_days,
        event_type=event_type,
        category=category,
        covariates=tuple(covariate) if covariate else None,
        breakdowns=tuple(by or ()),
        resamples=resamples,
        seed=cfg.seed,
        cost=cost,
        segments=tuple(segment) if segment else None,
        destination=destination,
    )
    with console.status("measuring lift"):
        result = jobs.measure(
            events_path(events, cfg),
            None if arms else memberships_dir,
            out or work / "measure",
            request,
            cfg,
            scores,
            arms,
        )
    _print_result(result)


def _print_result(result) -> None:
    table = Table(title=f"lift at {result.as_of} (95 % bootstrap intervals)")
    for column in ("segment", "figure", "estimate", "95 % interval", "p"):
        table.add_column(column, justify="left" if column in ("segment", "figure") else "right")
    whole = result.table[result.table["breakdown"] == ""]
    for row in whole.itertuples():
        if row.metric not in _SHOWN:
            continue
        p = "" if row.p_value is None or math.isnan(row.p_value) else f"{row.p_value:.3g}"
        table.add_row(
            escape(row.segment), row.metric, f"{row.estimate:,.4g}", f"{row.low:,.4g} .. {row.high:,.4g}", p
        )
    console.print(table)
    for segment, sizes in result.sizes.items():
        leaks = result.contamination.get(segment, {})
        console.print(
            f"{escape(segment)}: {sizes['targeted']:,} targeted, {sizes['holdout']:,} holdout; "
            + "contamination: "
            + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in leaks.items())
        )
    console.print(f"wrote {escape(str(result.out))} (lift.parquet, lift.json)")


def _print_plans(plans) -> None:
    table = Table(title="holdout power (80 % power, alpha 0.05)")
    for column in (
        "segment",
        "members",
        "holdout",
        "baseline",
        "min. detectable lift",
        "relative",
        "holdout needed",
    ):
        table.add_column(column, justify="left" if column == "segment" else "right")
    for segment, p in plans.items():
        needed = (
            "-"
            if p.expected_lift is None
            else (f"{p.holdout_needed:,}" if p.holdout_needed else "unreachable")
        )
        table.add_row(
            escape(segment),
            f"{p.audience:,}",
            f"{p.holdout:,}",
            f"{p.baseline_rate:.1%}",
            f"{p.minimum_detectable_lift:.2%}",
            f"{p.minimum_detectable_relative_lift:.0%}",
            needed,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``measure`` to the ``propensity`` app."""
    app.command("measure")(measure)
