"""The ``propensity`` command line: one Typer command per step, with sensible defaults."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.pipeline.config_files import load_project_config

app = typer.Typer(
    name="propensity",
    help="Behavioural events -> calibrated propensity scores, explanations and segments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _quiet_libraries() -> None:
    """Behavioural events -> calibrated propensity scores, explanations and segments."""
    # MLflow narrates every registration and pickling choice; our own output says what matters.
    # It reads this when it is imported (later, lazily), so a user's own setting wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")


F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Project YAML (default: configs/project.yaml if present).")
]
EventsOption = Annotated[
    Path | None,
    typer.Option(
        "--events", help="Events file or directory, or an `ingest` output (default: config `events`)."
    ),
]
AsOfOption = Annotated[str | None, typer.Option("--as-of", help="As-of date, YYYY-MM-DD.")]
OnBadRowsOption = Annotated[str | None, typer.Option("--on-bad-rows", help="fail (default) or quarantine.")]


def user_errors(func: F) -> F:
    """Turn a UserError into one red line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_date(value: str | None, option: str = "--as-of") -> dt.date | None:
    """YYYY-MM-DD -> date, or a UserError naming the option."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option}: expected a date as YYYY-MM-DD, got {value!r}") from None


def _on_bad_rows(value: str | None) -> str | None:
    if value is not None and value not in ("fail", "quarantine"):
        raise UserError(f"--on-bad-rows: expected 'fail' or 'quarantine', got {value!r}")
    return value


def _config(path: Path | None) -> ProjectConfig:
    return load_project_config(path)


def _events(events: Path | None, config: ProjectConfig) -> Path:
    return events if events is not None else Path(config.events)


def print_summary(summary: dict, title: str) -> None:
    """The validate/ingest summary as rich tables."""
    counts = Table(title=title, show_header=False)
    for key in (
        "rows_in",
        "rows_written",
        "duplicates_dropped",
        "rows_quarantined",
        "bad_rows",
        "profiles",
        "known_profiles",
    ):
        if key in summary:
            counts.add_row(key.replace("_", " "), f"{summary[key]:,}")
    counts.add_row("time range", f"{summary.get('first_event')} .. {summary.get('last_event')}")
    console.print(counts)
    for key, label in (
        ("events_by_type", "event type"),
        ("events_by_channel", "channel"),
        ("identities_by_namespace", "identity namespace"),
        ("bad_rows_by_reason", "bad-row reason"),
    ):
        values = summary.get(key) or {}
        if not values:
            continue
        table = Table(show_header=True)
        table.add_column(label)
        table.add_column("count", justify="right")
        for name, count in values.items():
            table.add_row(str(name), f"{count:,}")
        console.print(table)
    collapses = summary.get("identity_collapses", [])
    for reason in sorted({c["reason"] for c in collapses}):
        group = [c for c in collapses if c["reason"] == reason]
        console.print(
            f"[yellow]identity guardrail ({reason}):[/] split {len(group)} components of "
            f"{sum(c['identities'] for c in group):,} identities into "
            f"{sum(c['profiles_after_split'] for c in group):,} profiles "
            f"({sum(c['separated_identities'] for c in group):,} identities kept apart)"
        )
    if "rows_in" in summary:
        console.print(
            f"rows in {summary['rows_in']:,} = written {summary['rows_written']:,} + duplicates "
            f"{summary['duplicates_dropped']:,} + bad {summary['bad_rows']:,}"
        )


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
        str,
        typer.Option(
            "--difficulty",
            help="realistic (hidden purchase cycles, offline purchases, promotions, bots, drift) or easy.",
        ),
    ] = "realistic",
    scenario: Annotated[
        str,
        typer.Option("--scenario", help="omnichannel, or purchase_only (only purchases, each with crm_id)."),
    ] = "omnichannel",
) -> None:
    """Generate synthetic Luma events, profile attributes and ground truth."""
    from propensity.features.simulator import GeneratorSettings
    from propensity.features.synthetic_io import generate as run

    settings = GeneratorSettings(
        profiles=profiles,
        days=days,
        seed=seed,
        start=parse_date(start, "--start"),
        ground_truth=ground_truth,
        difficulty=difficulty,
        scenario=scenario,
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
) -> None:
    """Dry run: validate events and print a summary; exit 2 on bad rows unless quarantining."""
    from propensity.pipeline import steps

    cfg = _config(config)
    policy = _on_bad_rows(on_bad_rows) or cfg.ingest.on_bad_rows
    summary = steps.validate(_events(events, cfg), cfg, parse_date(as_of), profiles)
    print_summary(summary, f"validate {_events(events, cfg)}")
    if summary["bad_rows"] and policy == "fail":
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["bad_rows_by_reason"].items())
        raise UserError(
            f"{summary['bad_rows']} bad rows ({reasons}); see `propensity ingest --on-bad-rows quarantine`"
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
) -> None:
    """Validate, hash, de-duplicate and stitch events into an ingest directory."""
    from propensity.pipeline import steps

    cfg = _config(config)
    target = out or Path(cfg.work_dir) / "ingested"
    with console.status("ingesting events"):
        summary = steps.ingest(
            _events(events, cfg), target, cfg, profiles, _on_bad_rows(on_bad_rows), parse_date(as_of)
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
) -> None:
    """Point-in-time feature table at --as-of (default: the day after the last event)."""
    from propensity.pipeline import steps

    cfg = _config(config)
    date = parse_date(as_of)
    target = (
        out
        or Path(cfg.work_dir)
        / "features"
        / f"features_{as_of or 'latest'}{'_' + model if model else ''}.parquet"
    )
    with console.status("building features"):
        summary = steps.build_features(_events(events, cfg), target, cfg, date, model)
    label_note = (
        f", {summary['positives']:,} positive labels"
        if summary["labelled"]
        else " (no labels: the horizon has not passed)"
        if model
        else ""
    )
    console.print(
        f"wrote {summary['rows']:,} profiles x {summary['features']} features at {summary['as_of']} "
        f"to {summary['out']}{label_note}"
    )


def print_metrics(metrics: dict, title: str) -> None:
    """Model vs baselines vs oracle, side by side."""
    table = Table(title=title)
    for column in ("metric", "model", "logistic regression (RFM)", "recency", "oracle"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    prefix = "test_" if "test_auc" in metrics else "eval_"
    table.add_row(
        "AUC",
        fmt(metrics.get(f"{prefix}auc")),
        fmt(metrics.get("baseline_logreg_auc")),
        fmt(metrics.get("baseline_recency_auc")),
        fmt(metrics.get(f"{'' if prefix == 'test_' else prefix}oracle_auc")),
    )
    table.add_row(
        "average precision",
        fmt(metrics.get(f"{prefix}average_precision")),
        fmt(metrics.get("baseline_logreg_average_precision")),
        "",
        "",
    )
    table.add_row(
        "lift at top 10 %",
        fmt(metrics.get(f"{prefix}lift_at_10")),
        fmt(metrics.get("baseline_logreg_lift_at_10")),
        "",
        "",
    )
    for key, label in (
        ("brier", "Brier score"),
        ("log_loss", "log loss"),
        ("ece", "expected calibration error"),
        ("base_rate", "base rate"),
    ):
        table.add_row(label, fmt(metrics.get(f"{prefix}{key}")), "", "", "")
    ratio = metrics.get("auc_to_oracle", metrics.get("eval_auc_to_oracle"))
    if ratio is not None:
        table.add_row("AUC / oracle AUC", fmt(ratio), "", "", "")
    console.print(table)


def print_buckets(buckets) -> None:
    table = Table(title="buckets: predicted vs actual")
    for column in buckets.columns:
        table.add_column(str(column), justify="right")
    for row in buckets.itertuples(index=False):
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
@user_errors
def train(
    model: Annotated[str, typer.Argument(help="Model name (configs/models/NAME.yaml) or a YAML path.")],
    events: EventsOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="End of the data training may see (default: all).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Train a model on stacked snapshots, log it to MLflow and register it as challenger."""
    from propensity.pipeline import modelling

    cfg = _config(config)
    with console.status(f"training {model}"):
        result = modelling.train(model, _events(events, cfg), cfg, parse_date(as_of))
    console.print(
        f"run [bold]{result['run_id']}[/]  registered [bold]{model} v{result['version']}[/] "
        f"(alias challenger), {result['features']} features, snapshots {result['snapshots'][0]} .. "
        f"{result['snapshots'][-1]}"
    )
    print_metrics(result["metrics"], f"{model}: test snapshot {result['snapshots'][-1]}")
    print_buckets(result["buckets"])


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Snapshot date whose horizon has passed.")],
    events: EventsOption = None,
    version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Model alias (default champion).")] = None,
    config: ConfigOption = None,
) -> None:
    """Expected vs actual: evaluate a registered version on a later snapshot."""
    from propensity.pipeline import modelling

    cfg = _config(config)
    if version and alias:
        raise UserError("give --version or --alias, not both")
    with console.status(f"evaluating {model}"):
        result = modelling.evaluate(model, _events(events, cfg), cfg, parse_date(as_of), version, alias)
    console.print(
        f"{model} v{result['version']} on {result['rows']:,} profiles at {result['as_of']} "
        f"(run {result['run_id']})"
    )
    print_metrics(result["metrics"], f"{model} v{result['version']} at {result['as_of']}")
    print_buckets(result["buckets"])


@app.command()
@user_errors
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str | None, typer.Option("--version", help="Promote this version regardless.")] = None,
    config: ConfigOption = None,
) -> None:
    """Move the champion alias to the challenger if it is better (or to --version)."""
    from propensity.pipeline import modelling

    outcome = modelling.promote(model, _config(config), version)
    console.print(
        ("[green]promoted[/]: " if outcome.promoted else "[yellow]not promoted[/]: ") + outcome.reason
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
    from propensity.pipeline import demo as demo_mod

    demo_mod.run(out, _config(config), profiles=profiles, days=days, console=console)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
