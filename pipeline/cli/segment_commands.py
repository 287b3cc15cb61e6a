"""The ``segments``, ``export`` and ``monitor`` commands, added to the CLI by :func:`register`.

Exit codes: 0 on success, 2 on a user error (one line on stderr), and for ``monitor`` 1 when
the drift alert fires, so a scheduler can page someone. ``--json`` prints the job's result as
one JSON object on stdout (errors as ``{"error": ...}``, same exit codes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from propensity.pipeline.cli.json_output import JsonOption, print_json
from propensity.pipeline.cli.options import (
    AsOfOption,
    ConfigOption,
    EngineOption,
    EventsOption,
    events_path,
    load_config,
    load_config_for,
    parse_date,
    status_console,
    user_errors,
)
from propensity.pipeline.cli.printing import print_drift, print_exports, print_segments

ScoresOption = Annotated[
    Path | None, typer.Option("--scores", help="Score partitions directory (default: WORK_DIR/scores).")
]
MembershipsOption = Annotated[
    Path | None,
    typer.Option("--memberships", help="Memberships directory of `segments` (default: WORK_DIR/segments)."),
]


@user_errors
def segments(
    events: EventsOption = None,
    scores: ScoresOption = None,
    as_of: AsOfOption = None,
    segments_file: Annotated[Path, typer.Option("--segments", help="Segment definitions (YAML).")] = Path(
        "configs/segments.yaml"
    ),
    out: Annotated[
        Path | None, typer.Option("--out", help="Memberships directory (default: WORK_DIR/segments).")
    ] = None,
    config: ConfigOption = None,
    engine: EngineOption = None,
    json_output: JsonOption = False,
) -> None:
    """Qualify profiles into segments at --as-of: memberships with realized / existing / exited."""
    from propensity.pipeline.jobs import segments as jobs

    cfg = load_config_for(config, engine)
    work = Path(cfg.work_dir)
    with status_console(json_output).status("qualifying segments"):
        result = jobs.qualify_segments(
            events_path(events, cfg),
            scores or work / "scores",
            parse_date(as_of),
            segments_file,
            out or work / "segments",
            cfg,
        )
    if json_output:
        print_json(result)
        return
    print_segments(result)


@user_errors
def export(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Memberships date, YYYY-MM-DD (default: the latest).")
    ] = None,
    destinations: Annotated[
        Path, typer.Option("--destinations", help="Destination definitions (YAML).")
    ] = Path("configs/destinations.yaml"),
    memberships: MembershipsOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Export directory (default: WORK_DIR/exports).")
    ] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write each destination's segments with only the identities it may receive."""
    from propensity.pipeline.jobs import export as export_jobs

    cfg = load_config(config)
    work = Path(cfg.work_dir)
    with status_console(json_output).status("exporting segments"):
        result = export_jobs.export_segments(
            memberships or work / "segments",
            parse_date(as_of),
            destinations,
            out or work / "exports",
            cfg,
        )
    if json_output:
        print_json(result)
        return
    print_exports(result)


@user_errors
def monitor(
    model: Annotated[str, typer.Argument(help="Model name (configs/models/NAME.yaml) or a YAML path.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Date of the score partition to check.")],
    events: EventsOption = None,
    scores: ScoresOption = None,
    monitoring: Annotated[
        Path | None,
        typer.Option("--monitoring", help="Thresholds YAML (default: configs/monitoring.yaml if present)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Report directory (default: WORK_DIR/monitoring/model=NAME/as_of=DATE)."),
    ] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Score and feature drift (PSI) against the model's test snapshot; exit 1 on alert."""
    from propensity.pipeline.jobs import monitor as monitor_jobs
    from propensity.pipeline.jobs.config_files import load_model_config, load_monitor_config

    cfg = load_config(config)
    date = parse_date(as_of)
    name = load_model_config(model, cfg).name
    work = Path(cfg.work_dir)
    with status_console(json_output).status(f"monitoring {name}"):
        result = monitor_jobs.monitor_model(
            model,
            events_path(events, cfg),
            scores or work / "scores",
            date,
            cfg,
            out or work / "monitoring" / f"model={name}" / f"as_of={date}",
            load_monitor_config(monitoring),
        )
    if json_output:
        print_json(result)
    else:
        print_drift(result)
    if result.alert:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``segments``, ``export`` and ``monitor`` to the ``propensity`` app."""
    app.command("segments")(segments)
    app.command("export")(export)
    app.command("monitor")(monitor)
