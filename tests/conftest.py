"""Shared fixtures: tiny hand-written event files and one small generated Luma dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from propensity.core.config import ProjectConfig
from propensity.features.simulator import GeneratorSettings
from propensity.features.synthetic_io import generate
from propensity.pipeline.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def config() -> ProjectConfig:
    return ProjectConfig()


def invoke(runner: CliRunner, *args: str):
    """Run the CLI; stderr is part of the output a user reads."""
    return runner.invoke(app, list(args), catch_exceptions=False)


def write_events(path: Path, rows: list[dict]) -> Path:
    """Write rows as CSV, JSONL or Parquet depending on the suffix."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def luma_small(tmp_path_factory) -> Path:
    """A small synthetic Luma dataset shared by the tests that need realistic data."""
    out = tmp_path_factory.mktemp("luma") / "luma"
    generate(GeneratorSettings(profiles=1500, days=240, seed=7), out)
    return out
