"""What every command shares: options, date parsing, config loading and the one-line errors."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.pipeline.cli.json_output import print_json
from propensity.pipeline.jobs.config_files import load_project_config

# Wide enough that no label, figure or interval is ever cut or wrapped in a file or pipe.
UNWRAPPED_WIDTH = 10_000
RULE_WIDTH = 80


class OutputConsole(Console):
    """A rich console that never cuts or wraps when its output is not a terminal: a file, a
    pipe or a script reads whole lines (a terminal still gets tables fitted to its width)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Rich also takes a width from COLUMNS; only a width given here is kept for a file or
        # pipe (CI runners and schedulers export COLUMNS=80, and a script must still read
        # whole lines).
        self._given_width = kwargs.get("width")

    def _to_a_file(self) -> bool:
        """Whether the output is not a terminal device. Asked of the file itself: rich's
        ``is_terminal`` also says yes for FORCE_COLOR, TTY_COMPATIBLE or a notebook kernel met
        earlier in the process, and a pipe must still get whole lines then."""
        isatty = getattr(self.file, "isatty", None)
        try:
            return isatty is None or not isatty()
        except ValueError:  # a closed file
            return True

    @property
    def size(self) -> ConsoleDimensions:
        dimensions = super().size
        if self._given_width is None and self._to_a_file():
            return ConsoleDimensions(UNWRAPPED_WIDTH, dimensions.height)
        return dimensions

    def rule(self, *args: Any, **kwargs: Any) -> None:
        """A horizontal rule spans the width: 80 columns in a file, not :data:`UNWRAPPED_WIDTH`."""
        if self._given_width is None and self._to_a_file():
            from rich.rule import Rule

            self.print(Rule(*args, **kwargs), width=RULE_WIDTH)
            return
        super().rule(*args, **kwargs)


console = OutputConsole()
err_console = OutputConsole(stderr=True)

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
EngineOption = Annotated[
    str | None, typer.Option("--engine", help="duckdb or spark (default: the config's engine.name).")
]


def user_errors(func: F) -> F:
    """Turn a UserError into one red line on stderr and exit code 2 (no traceback); under
    ``--json`` (a ``json_output`` parameter) also ``{"error": "..."}`` on stdout, so a script
    reading stdout always gets one JSON object."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as error:
            # Escaped: a path, rule or pattern such as `^[a-z]{0,63}$` is printed as written,
            # never read as rich markup.
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            if kwargs.get("json_output"):
                print_json({"error": str(error)})
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


def on_bad_rows_policy(value: str | None) -> str | None:
    """Check an ``--on-bad-rows`` value; None leaves the config's policy."""
    if value is not None and value not in ("fail", "quarantine"):
        raise UserError(f"--on-bad-rows: expected 'fail' or 'quarantine', got {value!r}")
    return value


def load_config(path: Path | None) -> ProjectConfig:
    """The project config from ``--config`` or the default path."""
    return load_project_config(path)


def events_path(events: Path | None, config: ProjectConfig) -> Path:
    """``--events``, else the config's ``events`` path."""
    return events if events is not None else Path(config.events)


def load_config_for(path: Path | None, engine: str | None) -> ProjectConfig:
    """The project config, with ``--engine`` (when given) in place of ``engine.name``."""
    config = load_project_config(path)
    if engine is None:
        return config
    if engine not in ("duckdb", "spark"):
        raise UserError(f"--engine: expected 'duckdb' or 'spark', got {engine!r}")
    return config.model_copy(update={"engine": config.engine.model_copy(update={"name": engine})})


def status_console(json_output: bool) -> Console:
    """Where progress goes: stdout for a person, stderr under ``--json`` (stdout is the JSON)."""
    return err_console if json_output else console
