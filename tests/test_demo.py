"""The demo runs the whole story on a fresh directory; the notebooks run on what it leaves.

Both tests share one demo run (one xdist group, so they land on the same worker).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(CLI result, demo directory) of one small demo, with its own MLflow database."""
    from typer.testing import CliRunner

    tmp = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        patch.chdir(ROOT)
        result = invoke(
            CliRunner(), "demo", "--profiles", "12000", "--days", "300", "--out", str(tmp / "demo")
        )
    return result, tmp / "demo"


def test_demo_tells_the_story(demo_run):
    result, demo = demo_run
    assert result.exit_code == 0, result.output[-3000:]
    text = " ".join(result.output.split())
    for fragment in (
        "1. generate",
        "2. ingest and stitch identities",
        "3. train conversion",
        "3. train upsell",
        "3. train churn",
        "4. score, qualify segments, export",
        "lapsed_yoga",
        "5. monitor",
        "score PSI",
        "6. Sarah",
        "7. report",
        "8. journeys",
        "Yoga funnel",
        "What drives yoga purchases",
        "What drives yoga class registrations",
        "9. the yoga campaign: holdout and incremental revenue",
        "were held out at random",
        "incremental revenue:",
        "the simulator's truth:",
        "10. who the uplift model would target next",
        "chosen on validation by Qini",
        "the oracle's (ranked by each person's true effect)",
        "uplift's less propensity's:",
        "who it would target next",
    ):
        assert fragment in text, fragment
    assert (demo / "ingested" / "events.parquet").is_file()
    assert len(list((demo / "scores").glob("model=*/as_of=*/part-0.parquet"))) == 6
    assert any((demo / "exports").rglob("*.csv")) and (demo / "reports" / "upsell.html").is_file()
    assert (demo / "journeys" / "attribution" / "journey.html").is_file()
    assert (demo / "journeys" / "attribution_classes" / "journey.html").is_file()
    summary = json.loads((demo / "demo.json").read_text())
    assert summary["sarah"] and set(summary["models"]) == {"conversion", "upsell", "churn"}
    uplift = summary["uplift"]
    assert uplift["model_family"] in ("uplift_t", "uplift_x") and uplift["qini"] < uplift["oracle_qini"]
    assert (Path(uplift["scores"]) / "part-0.parquet").is_file()
    # every model's buckets on its test snapshot: predicted rate against the actual rate's interval
    for name in ("conversion", "upsell", "churn"):
        calibrated = summary["calibrated_buckets"][name]
        assert set(calibrated) <= {"high", "medium", "low"} and calibrated, name
        said = (
            "agree within their 95 % intervals" if all(calibrated.values()) else "outside the actual rate's"
        )
        assert f"{name}: predicted" in text and said in text, name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_the_demo(path, demo_run, monkeypatch):
    result, demo = demo_run
    assert result.exit_code == 0, result.output[-3000:]
    assert (demo / "journeys" / "attribution" / "journey.html").is_file()
    summary = json.loads((demo / "demo.json").read_text())
    # The kernel inherits the environment: the demo's directory and MLflow database.
    monkeypatch.setenv("PROPENSITY_DEMO", str(demo))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.name == "feature_importance.ipynb":
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 4  # importance, SHAP summary, lift, calibration
        text = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
        assert summary["sarah"] in text  # Sarah's factors are shown
        assert "mean_abs_shap" in text and "lift" in text
    if path.name == "campaign_lift.ipynb":
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) == 2  # both arms, raw vs adjusted lift
        text = "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
        assert "incremental_revenue" in text and "minimum_detectable_lift" in text
        assert "the oracle's" in text and "next audience" in text  # the uplift model's cells ran


def test_the_demo_says_which_buckets_came_true():
    import numpy as np

    from propensity.models import evaluate as ev
    from propensity.pipeline.cli.demo import calibration_verdict

    # low: 0.05 predicted, 10/200 happened; high: 0.30 predicted, 15/100 (interval ~[0.09, 0.23])
    y = np.r_[np.ones(10), np.zeros(190), np.ones(15), np.zeros(85)]
    p = np.r_[np.full(200, 0.05), np.full(100, 0.30)]
    bucket = np.array(["low"] * 200 + ["high"] * 100)
    table = ev.bucket_table(y.astype(int), p, bucket)
    said = calibration_verdict("upsell", table)
    assert said.startswith("upsell: predicted rate outside") and "high predicted 0.300, actual 0.150" in said
    assert "low" not in said
    agreeing = ev.bucket_table(y[:200].astype(int), p[:200], bucket[:200])
    assert calibration_verdict("upsell", agreeing).endswith(
        "agree within their 95 % intervals in every bucket"
    )
