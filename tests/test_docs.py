"""The README's generated parts: the config reference never drifts from the pydantic models, and
the report's pictures are cut from a real report page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from propensity.core.config import ModelConfig, ProjectConfig
from propensity.models.plots import plt
from propensity.models.report import Figure, ReportSection, png_of, render_report, report_figures
from propensity.pipeline.cli.config_reference import END, START, config_reference
from propensity.pipeline.cli.docs_commands import GALLERY_END, GALLERY_START
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_generated_from_the_models():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(START, 1)[1].split(END, 1)[0]
    assert section.strip() == config_reference().strip(), (
        "README's config reference is out of date: run `propensity docs config-reference --write README.md`"
    )


def test_reference_lists_every_key_with_its_default_and_meaning():
    reference = config_reference()
    for key, default in (
        ("scoring.chunk_rows", "`100000`"),
        ("training.snapshots.spacing_days", "`7`"),
        ("training.tuning.trials", "`12`"),
        ("segments[].rule", "required"),
        ("destinations[].required_consents", "`[]`"),
    ):
        row = next(line for line in reference.splitlines() if line.startswith(f"| `{key}` |"))
        assert default in row, row
        assert row.rstrip(" |").split("|")[-1].strip(), f"{key} has no meaning"
    # Every leaf field of the two main files has a row and a description.
    for prefix, model in (("", ProjectConfig), ("", ModelConfig)):
        for name, info in model.model_fields.items():
            assert f"| `{prefix}{name}` |" in reference
            # A nested section may be described by its own model's docstring; a built-in type's
            # docstring (int's, str's) describes nothing.
            annotation = info.annotation
            section_doc = (
                isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__doc__
            )
            assert info.description or section_doc, name


def test_config_reference_command_writes_only_between_the_markers(tmp_path, runner):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\nstale\n{END}\nafter\n")
    result = invoke(runner, "docs", "config-reference", "--write", str(readme))
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "stale" not in text and "| `training.seed` |" in text
    again = invoke(runner, "docs", "config-reference", "--write", str(readme))
    assert "already up to date" in again.output and readme.read_text() == text
    readme.write_text("no markers here\n")
    result = invoke(runner, "docs", "config-reference", "--write", str(readme))
    assert result.exit_code == 2 and "no markers" in result.output


def _chart(title: str) -> Figure:
    fig, ax = plt.subplots()
    ax.plot(np.arange(5), np.arange(5) ** 2)
    return Figure(title, png_of(fig), f"caption of {title}")


def test_report_images_cut_every_chart_of_a_report_and_write_the_gallery(tmp_path, runner):
    charts = [_chart("Gains vs baselines"), _chart("Calibration"), _chart("Scores at 2025-12-01")]
    page = render_report(
        "upsell v1",
        "sub",
        [
            ReportSection("a", figures=charts[:2], tables=[("t", pd.DataFrame({"x": [1]}))]),
            ReportSection("b", figures=charts[2:]),
        ],
    )
    assert report_figures(page) == charts
    report = tmp_path / "upsell.html"
    report.write_text(page)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{GALLERY_START}\n{GALLERY_END}\nend\n")
    out = tmp_path / "docs" / "images"
    result = invoke(runner, "docs", "report-images", str(report), "--out", str(out), "--readme", str(readme))
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [
        "01_gains_vs_baselines.png",
        "02_calibration.png",
        "03_scores_at_2025_12_01.png",
    ]
    assert [f.read_bytes() for f in files] == [c.png for c in charts]
    assert "![Calibration](docs/images/02_calibration.png)" in readme.read_text()
    missing = invoke(runner, "docs", "report-images", str(tmp_path / "nope.html"), "--out", str(out))
    assert missing.exit_code == 2 and "no such report" in missing.output


def test_readme_layout_lists_each_module_of_core_features_and_models_once():
    """One row a module for ``core/``, ``features/`` (the Spark wing aside) and ``models/``: a
    new, moved or deleted module shows up here before a newcomer is misled."""
    layout = (
        (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    )
    rows = [line.split("|")[1].strip() for line in layout.splitlines() if line.startswith("| `")]
    listed = [row.strip("`") for row in rows if row.startswith(("`core/", "`features/", "`models/"))]
    mine = [row for row in listed if not row.startswith("features/spark/")]
    assert all("`" not in row for row in mine), "one module a row"
    on_disk = sorted(
        p.relative_to(ROOT).as_posix()
        for folder in ("core", "features", "models")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "__init__.py" and "spark" not in p.relative_to(ROOT).parts
    )
    assert sorted(mine) == on_disk
