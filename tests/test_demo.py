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
        "1/5 generate",
        "2/5 ingest and stitch identities",
        "both histories are now one profile",
        "lapsed yoga buyers",
        "4/5 train conversion",
        "4/5 train upsell",
        "becomes champion",
        "5/5 why this score?",
        "AUC / oracle AUC",
    ):
        assert fragment in text, fragment
    assert (tmp_path / "demo" / "ingested" / "events.parquet").is_file()
    assert (tmp_path / "demo" / "features" / "latest.parquet").is_file()
