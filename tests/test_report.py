"""The model report: one self-contained HTML page whose every chart renders."""

from __future__ import annotations

import base64
import io
import re
import shutil

from PIL import Image

from tests.conftest import invoke

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _rendered_in_browser(path) -> list[dict]:
    """Each image's natural size as a real headless Chromium renders the page: the system's
    Chromium, else Playwright's own. No browser is a failure (`make test` installs one)."""
    from playwright.sync_api import Error, sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        except Error as error:
            raise AssertionError(
                "no headless Chromium to render the report: install Debian's `chromium` or run "
                f"`python -m playwright install chromium` (make test does): {str(error)[:300]}"
            ) from None
        try:
            page = browser.new_page()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            script = "() => [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth}))"
            return page.evaluate(script)
        finally:
            browser.close()


def test_report_is_self_contained_and_every_chart_renders(scored, runner, tmp_path):
    run, scores = scored
    out = tmp_path / "churn.html"
    result = invoke(
        runner, "report", "churn", "--version", run.version, "--scores", str(scores), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()
    # No server, no network: nothing is fetched from anywhere.
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    for heading in (
        "How good is it?",
        "Are the probabilities honest?",
        "What drives the score?",
        "Scores and their history",
    ):
        assert heading in html
    assert "Top factors per bucket" in html and "Predicted vs actual per bucket" in html
    # calibration on the test snapshot: overall with the base rate's interval, per bucket with its own
    assert re.search(r"0\.\d{4} predicted on average, 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\] happened", html)
    assert "actual_low" in html and "within_interval" in html
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 6
    for alt, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100, alt
    rendered = _rendered_in_browser(out)
    assert len(rendered) == len(images)
    assert all(image["complete"] and image["width"] > 0 for image in rendered), rendered
