"""The ``plan`` command: a model's snapshot plan on given events, without training (added to
the CLI by :func:`register`; ``train`` prints the same plan before fitting)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from propensity.pipeline.cli.options import (
    ConfigOption,
    EngineOption,
    EventsOption,
    console,
    events_path,
    load_config_for,
    parse_date,
    user_errors,
)

if TYPE_CHECKING:  # the jobs import DuckDB and MLflow: not needed to print
    import pandas as pd


def print_plan(description: str, table: pd.DataFrame) -> None:
    """The plan's sentences, then one row per snapshot date."""
    for line in description.splitlines():
        console.print(escape(line))
    out = Table(title="snapshot plan")
    for column in table.columns:
        out.add_column(column.replace("_", " "), justify="left" if column in ("as_of", "role") else "right")
    for row in table.itertuples(index=False):
        out.add_row(
            *("-" if v is None or v != v else f"{v:,}" if isinstance(v, int) else str(v) for v in row)
        )
    console.print(out)


@user_errors
def plan(
    model: Annotated[str, typer.Argument(help="Model name (configs/models/NAME.yaml) or a YAML path.")],
    events: EventsOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="End of the data training may see (default: all).")
    ] = None,
    estimate_only: Annotated[
        bool, typer.Option("--estimate-only", help="Dates and estimated rows only: build no feature.")
    ] = False,
    config: ConfigOption = None,
    engine: EngineOption = None,
) -> None:
    """The snapshot plan `train` would use: dates, roles, population and positives, and why it adapted."""
    from propensity.pipeline.jobs import plan as plan_jobs
    from propensity.pipeline.jobs import train as train_jobs
    from propensity.pipeline.jobs.config_files import load_model_config
    from propensity.pipeline.jobs.events import load_events

    cfg = load_config_for(config, engine)
    with console.status(f"planning {model}"):
        loaded = load_events(events_path(events, cfg), cfg)
        cutoff = parse_date(as_of) or loaded.data_end()
        if estimate_only:
            snapshot_plan = plan_jobs.make_plan(load_model_config(model, cfg), loaded, cutoff)
            table = snapshot_plan.table()
        else:
            data = train_jobs.training_data(model, loaded, cfg, cutoff)
            snapshot_plan, table = data.plan, data.plan_table()
    print_plan(plan_jobs.describe(snapshot_plan, table), table)


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``propensity`` app."""
    app.command("plan")(plan)
