"""The demo runs the whole story on a fresh directory."""

from __future__ import annotations

import os

from tests.conftest import invoke


def test_demo_tells_the_story(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    result = invoke(runner, "demo", "--profiles", "12000", "--days", "300", "--out", str(tmp_path / "demo"))
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
    ):
        assert fragment in text, fragment
    demo = tmp_path / "demo"
    assert (demo / "ingested" / "events.parquet").is_file()
    assert len(list((demo / "scores").glob("model=*/as_of=*/part-0.parquet"))) == 6
    assert any((demo / "exports").rglob("*.csv")) and (demo / "reports" / "upsell.html").is_file()
