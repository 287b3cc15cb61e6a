"""The ``propensity`` command line: one Typer command per step, with sensible defaults."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from propensity.core.errors import UserError
from propensity.pipeline.cli.docs_commands import docs_app
from propensity.pipeline.cli.journey_commands import register as register_journey_commands
from propensity.pipeline.cli.json_output import JsonOption, print_json, to_jsonable
from propensity.pipeline.cli.measure_commands import register as register_measure_commands
from propensity.pipeline.cli.options import (
    AsOfOption,
    ConfigOption,
    EngineOption,
    EventsOption,
    OnBadRowsOption,
    console,
    events_path,
    load_config,
    load_config_for,
    on_bad_rows_policy,
    parse_date,
    status_console,
    user_errors,
)
from propensity.pipeline.cli.plan_command import print_plan
from propensity.pipeline.cli.plan_command import register as register_plan_command
from propensity.pipeline.cli.printing import (
    print_buckets,
    print_explanation,
    print_metrics,
    print_score_run,
    print_summary,
    print_uplift_metrics,
    print_warnings,
)
from propensity.pipeline.cli.segment_commands import register as register_segment_commands

app = typer.Typer(
    name="propensity",
    help="Behavioural events -> calibrated propensity scores, explanations and segments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _quiet_libraries() -> None:
    """Behavioural events -> calibrated propensity scores, explanations and segments."""
    # MLflow narrates every registration and pickling choice; our own output says what matters.
    # It reads this when it is imported (later, lazily), so a user's own setting wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report's downloads
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")


@app.command()
@user_errors
def generate(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("data/luma"),
    profiles: Annotated[int, typer.Option("--profiles", min=10, help="People to simulate.")] = 20_000,
    days: Annotated[int, typer.Option("--days", min=30, help="Days of history.")] = 365,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    start: Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")] = "2025-01-01",
    ground_truth: Annotated[bool, typer.Option(help="Write the ground truth (for the oracle).")] = True,
    difficulty: Annotated[
        str, typer.Option(help="realistic (hidden cycles, offline buys, promotions, bots, drift) or easy.")
    ] = "realistic",
    scenario: Annotated[
        str, typer.Option(help="omnichannel, or purchase_only (only purchases, each with crm_id).")
    ] = "omnichannel",
    yoga_campaign: Annotated[
        bool,
        typer.Option(
            "--yoga-campaign",
            help="Add Luma's yoga campaign: random holdout, campaign_received events, true effects.",
        ),
    ] = False,
    chunk_profiles: Annotated[
        int,
        typer.Option(
            "--chunk-profiles",
            min=1,
            help="People simulated at a time (memory follows it, ~11 KB a person); more than one chunk "
            "needs --no-ground-truth and no campaign.",
        ),
    ] = 1_000_000,
) -> None:
    """Generate synthetic Luma events, profile attributes and ground truth."""
    from propensity.features.synthetic.world import LUMA_YOGA, GeneratorSettings
    from propensity.features.synthetic.writer import generate as run

    settings = GeneratorSettings(
        profiles=profiles,
        days=days,
        seed=seed,
        start=parse_date(start, "--start"),
        ground_truth=ground_truth,
        difficulty=difficulty,
        scenario=scenario,
        campaigns=(LUMA_YOGA,) if yoga_campaign else (),
        chunk_profiles=chunk_profiles,
    )
    with console.status("generating events"):
        summary = run(settings, out)
    console.print(
        f"wrote {summary.events:,} events for {summary.people:,} people "
        f"({summary.purchases:,} purchases) to {out}"
    )


@app.command()
@user_errors
def validate(
    events: EventsOption = None,
    profiles: Annotated[Path | None, typer.Option("--profiles", help="Profile attributes file.")] = None,
    as_of: AsOfOption = None,
    on_bad_rows: OnBadRowsOption = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
) -> None:
    """Dry run: validate events and print a summary; exit 2 on bad rows unless quarantining."""
    from propensity.pipeline.jobs import ingest as jobs

    cfg = load_config_for(config, engine)
    policy = on_bad_rows_policy(on_bad_rows) or cfg.ingest.on_bad_rows
    summary = jobs.validate(events_path(events, cfg), cfg, parse_date(as_of), profiles)
    print_summary(summary, f"validate {events_path(events, cfg)}")
    if summary.bad_rows and policy == "fail":
        reasons = ", ".join(f"{k}: {v}" for k, v in summary.bad_rows_by_reason.items())
        raise UserError(
            f"{summary.bad_rows} bad rows ({reasons}); see `propensity ingest --on-bad-rows quarantine`"
        )


@app.command()
@user_errors
def ingest(
    events: EventsOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: WORK_DIR/ingested).")
    ] = None,
    profiles: Annotated[Path | None, typer.Option("--profiles", help="Profile attributes file.")] = None,
    as_of: AsOfOption = None,
    on_bad_rows: OnBadRowsOption = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
) -> None:
    """Validate, hash, de-duplicate and stitch events into an ingest directory."""
    from propensity.pipeline.jobs import ingest as jobs

    cfg = load_config_for(config, engine)
    target = out or Path(cfg.work_dir) / "ingested"
    with console.status("ingesting events"):
        summary = jobs.ingest(
            events_path(events, cfg),
            target,
            cfg,
            profiles,
            on_bad_rows_policy(on_bad_rows),
            parse_date(as_of),
        )
    print_summary(summary, f"ingest -> {target}")


@app.command()
@user_errors
def features(
    events: EventsOption = None,
    as_of: AsOfOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name: its population and labels.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Parquet file to write.")] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
) -> None:
    """Point-in-time feature table at --as-of (default: the day after the last event)."""
    from propensity.pipeline.jobs import features as jobs

    cfg = load_config_for(config, engine)
    date = parse_date(as_of)
    target = (
        out
        or Path(cfg.work_dir)
        / "features"
        / f"features_{as_of or 'latest'}{'_' + model if model else ''}.parquet"
    )
    with console.status("building features"):
        summary = jobs.build_features(events_path(events, cfg), target, cfg, date, model)
    label_note = (
        f", {summary.positives:,} positive labels"
        if summary.labelled
        else " (no labels: the horizon has not passed)"
        if model
        else ""
    )
    print_warnings(summary.warnings)
    console.print(
        f"wrote {summary.rows:,} profiles x {summary.features} features at {summary.as_of} "
        f"to {escape(str(summary.out))}{label_note}"
    )
    chooser = f"model '{escape(model)}' selects " if model else "feature count: "
    console.print(chooser + escape(summary.feature_note))


@app.command()
@user_errors
def train(
    model: Annotated[str, typer.Argument(help="Model name (configs/models/NAME.yaml) or a YAML path.")],
    events: EventsOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="End of the data training may see (default: all).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    json_output: JsonOption = False,
) -> None:
    """Train a model on stacked snapshots, log it to MLflow and register it as challenger."""
    from propensity.pipeline.jobs import train as jobs

    cfg = load_config_for(config, engine)
    with status_console(json_output).status(f"training {model}"):
        result = jobs.train_model(
            model,
            events_path(events, cfg),
            cfg,
            parse_date(as_of),
            on_plan=None if json_output else (lambda d, t: print_plan(d, t)),
        )
    print_warnings(result.warnings)
    if json_output:
        print_json(result)
        return
    console.print(
        f"run [bold]{result.run_id}[/]  registered [bold]{escape(str(result.model))} v{result.version}[/] "
        f"(alias challenger), {result.features} features, snapshots {result.snapshots[0]} .. "
        f"{result.snapshots[-1]}"
    )
    console.print(f"feature count: {escape(result.feature_note)}")
    title = f"{model}: test snapshot {result.snapshots[-1]}"
    if result.model_family.startswith("uplift"):
        print_uplift_metrics(result.metrics, title, note=result.selection_reason)
    else:
        print_metrics(result.metrics, title, note=result.selection_reason)
    print_buckets(result.buckets)


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Snapshot date whose horizon has passed.")],
    events: EventsOption = None,
    version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Model alias (default champion).")] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Expected vs actual: evaluate a registered version on a later snapshot."""
    from propensity.pipeline.jobs import evaluate as evaluate_jobs

    cfg = load_config(config)
    if version and alias:
        raise UserError("give --version or --alias, not both")
    with status_console(json_output).status(f"evaluating {model}"):
        result = evaluate_jobs.evaluate_model(
            model, events_path(events, cfg), cfg, parse_date(as_of), version, alias
        )
    if json_output:
        print_json({"model": model, **to_jsonable(result)})
        return
    console.print(
        f"{model} v{result.version} on {result.rows:,} profiles at {result.as_of} (run {result.run_id})"
    )
    print_metrics(result.metrics, f"{model} v{result.version} at {result.as_of}")
    print_buckets(result.buckets)


@app.command()
@user_errors
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Promote this version, better than the champion or not.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it loses to a baseline on its test snapshot.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Move the champion alias to the challenger if it is better (or to --version); refused when
    it loses to the best baseline on its test snapshot, unless --force."""
    from propensity.pipeline.jobs import evaluate as evaluate_jobs

    outcome = evaluate_jobs.promote_model(model, load_config(config), version, force=force)
    console.print(
        ("[green]promoted[/]: " if outcome.promoted else "[yellow]not promoted[/]: ") + outcome.reason
    )


ModelVersionOption = Annotated[str | None, typer.Option("--version", help="Model version.")]
ModelAliasOption = Annotated[str | None, typer.Option("--alias", help="Model alias (default champion).")]


@app.command()
@user_errors
def score(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    events: EventsOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="As-of date (default: the day after the last event).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Score directory (default: WORK_DIR/scores).")
    ] = None,
    version: ModelVersionOption = None,
    alias: ModelAliasOption = None,
    factors: Annotated[
        int | None, typer.Option("--factors", help="Influential factors per profile (default: config).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    json_output: JsonOption = False,
) -> None:
    """Score the model's population at --as-of: probability, score, bucket and top factors."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from propensity.pipeline.jobs import score as jobs

    cfg = load_config_for(config, engine)
    with Progress(
        TextColumn(f"scoring {model}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=status_console(json_output),
        transient=True,
    ) as bar:
        task = bar.add_task("score", total=None)
        run = jobs.score_model(
            model,
            events_path(events, cfg),
            cfg,
            parse_date(as_of),
            out,
            alias,
            version,
            factors,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print_warnings(run.warnings)
    if json_output:
        print_json(run)
        return
    print_score_run(run)


@app.command()
@user_errors
def explain(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    profile: Annotated[str, typer.Option("--profile", help="The profile_id to explain.")],
    events: EventsOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="As-of date (default: the day after the last event).")
    ] = None,
    version: ModelVersionOption = None,
    alias: ModelAliasOption = None,
    factors: Annotated[int | None, typer.Option("--factors", help="Factors to show.")] = None,
    config: ConfigOption = None,
) -> None:
    """Why this score? One profile's probability, score, bucket and factors (or why it is not scored)."""
    from propensity.pipeline.jobs import explain as explain_jobs

    cfg = load_config(config)
    with console.status(f"explaining {profile}"):
        explanation = explain_jobs.explain_profile(
            model, events_path(events, cfg), cfg, profile, parse_date(as_of), alias, version, factors
        )
    print_explanation(explanation)


@app.command()
@user_errors
def report(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default: WORK_DIR/reports/MODEL_vN.html).")
    ] = None,
    scores: Annotated[
        Path | None, typer.Option("--scores", help="Score directory (default: WORK_DIR/scores).")
    ] = None,
    version: ModelVersionOption = None,
    alias: ModelAliasOption = None,
    config: ConfigOption = None,
) -> None:
    """One self-contained HTML page: quality vs baselines, calibration, drivers, scoring history."""
    from propensity.pipeline.jobs import report as report_jobs

    with console.status(f"writing the {model} report"):
        result = report_jobs.write_report(model, load_config(config), out, alias, version, scores)
    console.print(
        f"wrote {result.path} ({result.figures} charts, {result.score_runs} scoring runs); "
        f"logged to MLflow run {result.run_id}"
    )


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes everything.")] = Path(
        "demo_output"
    ),
    profiles: Annotated[int, typer.Option("--profiles", min=100)] = 40_000,
    days: Annotated[int, typer.Option("--days", min=120)] = 365,
    config: ConfigOption = None,
) -> None:
    """End to end on synthetic Luma data: generate, stitch, features, train, promote, explain."""
    from propensity.pipeline.cli import demo as demo_mod

    demo_mod.run(out, load_config(config), profiles=profiles, days=days, console=console)


register_segment_commands(app)
register_plan_command(app)
register_journey_commands(app)
register_measure_commands(app)
app.add_typer(docs_app, name="docs")


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
