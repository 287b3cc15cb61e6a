"""Shared fixtures: tiny hand-written event files and one small generated Luma dataset."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from propensity.core.config import ProjectConfig
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.pipeline.cli.app import app
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import train as model_jobs


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``xdist_group`` marks group under ``--dist loadgroup`` on pytest 9.2.

    pytest-xdist (3.8) groups by suffixing each marked item's node id with ``@group`` through
    ``item._nodeid``; pytest 9.2 derives ``nodeid`` from ``item._id`` instead, so the suffix was
    lost and every group's tests were spread over both workers (each building the module's
    fixtures, the demo run included). This sets the same suffix where xdist's did not take."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if not names or item.nodeid.endswith(suffix):
            continue
        from _pytest.nodeid import NodeId  # pytest 9.2+, where xdist's suffix does not take

        item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):
            raise RuntimeError(f"{item.nodeid}: could not put it in xdist group {suffix[1:]}")


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


@pytest.fixture(scope="session")
def luma_ingested(tmp_path_factory):
    """Enough synthetic customers for stable test metrics, ingested once."""
    root = tmp_path_factory.mktemp("models")
    generate(GeneratorSettings(profiles=15_000, days=330, seed=11), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    return root / "ingested"


@pytest.fixture(scope="session")
def tracking(tmp_path_factory):
    """One MLflow tracking database for the session (each xdist worker has its own)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def churn_run(luma_ingested, tracking):
    return model_jobs.train_model("churn", luma_ingested, ProjectConfig())


@pytest.fixture(scope="session")
def scored(churn_run, luma_ingested, tracking, tmp_path_factory):
    """The session's churn model scored at 2025-11-10: (ScoreRun, scores directory). By version,
    not by the `challenger` alias, which later retrains (test_models) move."""
    out = tmp_path_factory.mktemp("scores")
    run = score_jobs.score_model(
        "churn", luma_ingested, ProjectConfig(), dt.date(2025, 11, 10), out, version=churn_run.version
    )
    return run, out
