"""README "Bringing your own data": the CDNOW worked example, run as written on a slice of the
customers, and the ``--json`` objects its commands print checked against what the jobs wrote
(MLflow runs, score, membership and export files, the drift report).

The block is taken from README.md and run by bash, verbatim. The only stand-in: a ``lifetimes``
package on PYTHONPATH whose data file holds every 20th customer of the real one, so the block's
own ``find_spec("lifetimes")`` reads the slice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from propensity.features.build.snapshots import windows_before_data
from propensity.pipeline.cli.app import app
from tests.cdnow import cdnow_path

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the README block
# run by bash) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("own_data")

README = Path(__file__).resolve().parents[1] / "README.md"
EVERY = 20


def readme_block() -> str:
    """The bash block of README's worked example on CDNOW."""
    text = README.read_text()
    section = text[text.index("#### Worked example: CDNOW") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README: the CDNOW worked example has no bash block"
    return match.group(1)


def _slice_of_cdnow(root: Path) -> Path:
    """A stand-in ``lifetimes`` package holding every EVERY-th customer of the real data file."""
    lines = cdnow_path().read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if int(line.split()[0]) % EVERY == 0]
    package = root / "lifetimes"
    (package / "datasets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "datasets" / "CDNOW_master.txt").write_text("\n".join(kept) + "\n")
    return root


@pytest.fixture(scope="module")
def cdnow_recipe(tmp_path_factory) -> Path:
    """The README block run by bash in an empty directory; returns that directory."""
    root = tmp_path_factory.mktemp("cdnow_recipe")
    work = root / "run"
    work.mkdir()
    packages = _slice_of_cdnow(root / "packages")
    bin_dir = str(Path(sys.executable).parent)  # this venv's python and propensity
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # the README's default
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(packages),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block()],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"README block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return work


def _json(work: Path, name: str) -> dict:
    text = (work / f"{name}.json").read_text()
    assert text.count("\n") == 1, f"{name}: more than one line on stdout"
    return json.loads(text)


def _path(work: Path, written: str) -> Path:
    """A path from a JSON object: as the command was given it (here relative to the block's cwd)."""
    return work / written


def _mlflow_run(run_id: str, work: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}").get_run(run_id)


@pytest.mark.slow
def test_readme_cdnow_block_runs_on_a_slice(cdnow_recipe):
    events = pd.read_csv(cdnow_recipe / "events.csv")
    customers = events["crm_id"].nunique()
    assert customers == len([c for c in range(1, 23_571) if c % EVERY == 0])
    assert events["event_id"].is_unique and (events["event_type"] == "purchase").all()
    for name in ("train", "evaluate", "score", "segments", "export", "monitor"):
        assert "error" not in _json(cdnow_recipe, name), name


@pytest.mark.slow
def test_train_json_is_the_logged_run(cdnow_recipe):
    train = _json(cdnow_recipe, "train")
    assert train["model"] == "cdnow_repeat" and train["version"] == "1"
    logged = _mlflow_run(train["run_id"], cdnow_recipe).data.metrics
    for key in ("test_auc", "test_auc_ci_low", "test_auc_ci_high", "test_positives", "test_brier"):
        assert train["metrics"][key] == pytest.approx(logged[key], rel=1e-12), key
    assert train["metrics"]["test_positives"] > 30
    assert train["snapshots"][-1] < "1997-10-01" and train["trained_until"] == "1997-10-01"
    assert len(train["importance"]) == train["features"]
    # The earliest snapshot sees fewer days than the 365-day window: named once, with the numbers.
    first = dt.date.fromisoformat(train["snapshots"][0])
    days = (first - dt.date(1997, 1, 1)).days
    assert train["warnings"] == [
        f"earliest training snapshot: window 365d reaches before the first event: at {first} the data "
        f"hold {days} days (from 1997-01-01), so it counts only those {days} days"
    ]
    assert train["feature_note"].startswith(f"{train['features']} features")


@pytest.mark.slow
def test_evaluate_json_is_the_logged_run(cdnow_recipe):
    evaluation = _json(cdnow_recipe, "evaluate")
    assert evaluation["model"] == "cdnow_repeat" and evaluation["as_of"] == "1997-10-01"
    logged = _mlflow_run(evaluation["run_id"], cdnow_recipe).data.metrics
    shared = [k for k in evaluation["metrics"] if k in logged]
    assert "eval_auc" in shared
    for key in shared:
        assert evaluation["metrics"][key] == pytest.approx(logged[key], rel=1e-12), key
    assert sum(b["profiles"] for b in evaluation["buckets"]) == evaluation["rows"]


@pytest.mark.slow
def test_score_json_counts_the_written_rows(cdnow_recipe):
    score = _json(cdnow_recipe, "score")
    written = pd.read_parquet(_path(cdnow_recipe, score["out"]))
    assert score["scored"] == len(written) == score["eligible"] <= score["profiles"]
    assert score["bucket_sizes"] == written["bucket"].value_counts().to_dict()
    assert score["population"] == "purchase_count_365d >= 1"
    # The model scores with the features it was trained on, counted the same way.
    assert score["features"] == _json(cdnow_recipe, "train")["features"]


@pytest.mark.slow
def test_segments_and_export_json_count_the_written_files(cdnow_recipe):
    segments = _json(cdnow_recipe, "segments")
    (segment,) = segments["segments"]
    high = (
        pd.read_parquet(_path(cdnow_recipe, _json(cdnow_recipe, "score")["out"]))["bucket"] == "high"
    ).sum()
    assert segment["segment"] == "likely_repeat_buyers" and segment["size"] == high
    assert segment["size"] == segment["realized"] + segment["existing"]
    export = _json(cdnow_recipe, "export")
    (destination,) = export["destinations"]
    (written,) = destination["segments"]
    rows = pd.read_csv(_path(cdnow_recipe, written["path"]))
    assert written["rows"] == len(rows) == written["profiles"] == high
    assert (rows["namespace"] == "crm_id").all() and rows["value"].str.fullmatch(r"CD\d{5}").all()


@pytest.mark.slow
def test_monitor_json_is_the_drift_report(cdnow_recipe):
    monitor = _json(cdnow_recipe, "monitor")
    report = json.loads(_path(cdnow_recipe, monitor["report_path"]).read_text())
    assert monitor["report"]["score"]["psi"] == pytest.approx(report["score"]["psi"], rel=1e-12)
    assert monitor["alert"] == report["alert"] == bool(monitor["report"]["drifted"])


@pytest.fixture
def in_recipe(cdnow_recipe, monkeypatch) -> Path:
    """In-process CLI calls in the recipe's directory, on its MLflow store."""
    monkeypatch.chdir(cdnow_recipe)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cdnow_recipe / 'mlflow.db'}")
    return cdnow_recipe


def _cli(runner, *args: str):
    """A command on the recipe's ingested events and project config, in-process."""
    return runner.invoke(app, [*args, "--events", "work/ingested", "--config", "project.yaml"])


def _piped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command in its own process with stdout to a pipe, as a script or a file
    sees it, with COLUMNS=80 exported as CI runners and schedulers do (it must not wrap)."""
    command = [str(Path(sys.executable).parent / "propensity"), *args]
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_tables_in_a_file_keep_labels_and_intervals_on_one_line(in_recipe, runner):
    # CliRunner's stdout is not a terminal: no 80-column width, and nothing wraps.
    result = _cli(runner, "evaluate", "cdnow_repeat", "--as-of", "1997-10-01", "--alias", "challenger")
    assert result.exit_code == 0, result.output
    metrics = _json(in_recipe, "evaluate")["metrics"]
    lines = result.stdout.splitlines()
    for key, label in (("auc", "AUC"), ("average_precision", "avg precision"), ("brier", "Brier score")):
        (line,) = [line for line in lines if f"│ {label} " in line]
        value, low, high = (metrics[f"eval_{key}{end}"] for end in ("", "_ci_low", "_ci_high"))
        assert f"{value:.4f} [{low:.3f}, {high:.3f}]" in line, line
    (positives,) = [line for line in lines if "positives/rows" in line]
    assert f"{metrics['eval_positives']:,.0f}/{metrics['eval_rows']:,.0f}" in positives
    assert "…" not in result.stdout


def test_long_labels_in_a_file_are_never_cut(runner, tmp_path):
    long_type = "campaign_mailing_received_" + "_".join(f"region{i}" for i in range(20))
    events = tmp_path / "events.csv"
    pd.DataFrame(
        {
            "timestamp": ["2025-01-01 10:00:00", "2025-01-02 11:00:00"],
            "event_type": [long_type, "purchase"],
            "crm_id": ["c1", "c1"],
        }
    ).to_csv(events, index=False)
    result = _piped("validate", "--events", str(events), "--as-of", "2025-02-01", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(long_type) > 150
    (line,) = [line for line in result.stdout.splitlines() if long_type in line]
    assert line.rstrip().endswith("│") and " 1 │" in line


@pytest.mark.slow
def test_score_says_what_its_counts_are_and_warns_about_long_windows(in_recipe, runner, tmp_path):
    result = _piped(
        "score",
        "cdnow_repeat",
        "--as-of",
        "1997-10-01",
        "--alias",
        "challenger",
        "--out",
        str(tmp_path),
        "--events",
        "work/ingested",
        "--config",
        "project.yaml",
        cwd=in_recipe,
    )
    assert result.returncode == 0, result.stderr
    score = _json(in_recipe, "score")
    outside = score["profiles"] - score["eligible"]
    assert (
        f"{score['eligible']:,} profiles eligible of {score['profiles']:,} known at the date: "
        f"{outside:,} outside the population `purchase_count_365d >= 1`"
    ) in result.stdout
    # CDNOW starts on 1997-01-01: 273 days of data at 1997-10-01, shorter than the 365-day window.
    warning = (
        "window 365d reaches before the first event: at 1997-10-01 the data hold 273 days "
        "(from 1997-01-01), so it counts only those 273 days"
    )
    assert score["warnings"] == [warning]
    assert result.stderr.count("warning:") == 1 and warning in " ".join(result.stderr.split())
    assert "warning" not in result.stdout


@pytest.mark.slow
def test_train_features_and_score_count_the_same_features(in_recipe, runner, tmp_path):
    train, score = _json(in_recipe, "train"), _json(in_recipe, "score")
    out = tmp_path / "features.parquet"
    result = _cli(runner, "features", "--as-of", "1997-10-01", "--model", "cdnow_repeat", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"x {train['features']} features at 1997-10-01" in result.stdout
    assert f"model 'cdnow_repeat' selects {train['features']} features (" in result.stdout
    assert "window 365d reaches before the first event: at 1997-10-01" in " ".join(result.stderr.split())
    assert score["features"] == train["features"]
    # The written table carries exactly those model features (besides keys, labels, consents).
    written = pd.read_parquet(out)
    importance = {row["feature"] for row in train["importance"]}
    assert importance <= set(written.columns)


@pytest.mark.slow
def test_json_errors_are_one_object_on_stdout_and_exit_2(in_recipe, runner):
    result = _cli(runner, "score", "spaceships", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert list(error) == ["error"] and "spaceships" in error["error"]
    assert "spaceships" in result.stderr


@pytest.mark.parametrize(
    ("history_days", "expected"),
    [
        (400, None),
        (365, None),
        (364, "window 365d reaches before the first event: at 2025-12-31 the data hold 364 days"),
        (60, "windows 90d, 365d reach before the first event: at 2025-12-31 the data hold 60 days"),
    ],
)
def test_windows_longer_than_the_data_are_named_with_their_numbers(history_days, expected):
    as_of = dt.date(2025, 12, 31)
    warning = windows_before_data([7, 30, 90, 365, 30], as_of - dt.timedelta(days=history_days), as_of)
    if expected is None:
        assert warning is None
    else:
        assert warning.startswith(expected) and warning.count("only those") == 1


def test_json_values_are_plain_and_nothing_is_dropped():
    import dataclasses

    import numpy as np

    from propensity.pipeline.cli.json_output import to_jsonable

    @dataclasses.dataclass
    class Counts:
        realized: int
        existing: int

        @property
        def size(self) -> int:
            return self.realized + self.existing

    value = {
        "when": dt.date(2025, 1, 2),
        "path": Path("work/scores"),
        "nan": float("nan"),
        "numpy": np.float32(0.5),
        "table": pd.DataFrame({"bucket": ["high"], "profiles": np.array([3], dtype=np.int64)}),
        "counts": [Counts(2, 3)],
        3: {"a", "b"},
    }
    out = to_jsonable(value)
    assert json.loads(json.dumps(out, allow_nan=False)) == {
        "when": "2025-01-02",
        "path": "work/scores",
        "nan": None,
        "numpy": 0.5,
        "table": [{"bucket": "high", "profiles": 3}],
        "counts": [{"realized": 2, "existing": 3, "size": 5}],
        "3": ["a", "b"],
    }
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        to_jsonable(object())
