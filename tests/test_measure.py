"""`propensity measure` end to end on a generated world with Luma's yoga campaign: the
campaign's own arms recover its simulated revenue lift; a holdout segment (an A/A split the
simulator knows nothing of) finds none; --plan gives the holdouts' power; mistakes are one line."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from propensity.core.config import ProjectConfig
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.features.synthetic.world import LUMA_YOGA
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs.measure import plan_holdouts
from tests.conftest import invoke
from tests.test_report import _rendered_in_browser

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the generated
# campaign world and its ingest) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("measure")

SEGMENTS = """
segments:
  - name: known_customers
    description: every known profile (an A/A check of the holdout)
    rule: is_known = 1
    holdout: 0.2
    holdout_minimum: 300
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tracking) -> Path:
    root = tmp_path_factory.mktemp("measure")
    generate(GeneratorSettings(profiles=6000, days=150, seed=9, campaigns=(LUMA_YOGA,)), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    (root / "segments.yaml").write_text(SEGMENTS)
    return root


def _sent(world: Path) -> dict:
    return json.loads((world / "raw" / "ground_truth" / "campaigns.json").read_text())[0]


def test_the_campaigns_own_arms_recover_its_revenue_lift(runner, world):
    campaign = _sent(world)
    arms = world / "raw" / "ground_truth" / "campaign_people.parquet"
    args = ["measure", "--events", str(world / "ingested"), "--arms", str(arms), "--as-of", campaign["sent"]]
    result = invoke(runner, *args, "--category", "yoga", "--out", str(world / "lift"), "--cost", "2000")
    assert result.exit_code == 0, result.output
    out = world / "lift" / f"as_of={campaign['sent']}"
    table = pd.read_parquet(out / "lift.parquet").set_index("metric")
    written = json.loads((out / "lift.json").read_text())
    # Revenue adds up: the world's own yoga purchases are the same in both arms on average, so
    # the revenue per member lift estimates the campaign's true one.
    revenue = table.loc["revenue_per_member_lift"]
    assert revenue["low"] <= campaign["true"]["revenue_per_member_lift"] <= revenue["high"]
    assert table.loc["absolute_lift", "low"] > 0  # the campaign works, visibly
    assert table.loc["return_on_spend", "estimate"] == pytest.approx(
        (table.loc["incremental_revenue", "estimate"] - 2000) / 2000
    )
    sizes = written["sizes"]["campaign"]
    unmatched = written["contamination"]["campaign"]["unmatched_rows"]
    assert sizes["targeted"] + sizes["holdout"] + unmatched <= sum(campaign["members"].values())
    assert sizes["holdout"] == pytest.approx(campaign["members"]["holdout"], rel=0.02)
    assert written["covariates"] == ["purchase_count_90d", "revenue_sum_90d", "revenue_sum_365d"]
    # Logged to MLflow: the figures as metrics, the files as artifacts.
    run = mlflow.search_runs(experiment_names=["measure"], order_by=["start_time DESC"]).iloc[0]
    assert run["metrics.campaign.incremental_revenue"] == pytest.approx(
        table.loc["incremental_revenue", "estimate"]
    )
    assert run["tags.as_of"] == campaign["sent"] and run["tags.arms_from"] == "arms file"


def test_a_holdout_segment_measures_no_lift_where_there_is_none(runner, world):
    sent = _sent(world)["sent"]
    memberships = world / "segments"
    events = ["--events", str(world / "ingested")]
    segments = ["--segments", str(world / "segments.yaml")]
    result = invoke(runner, "segments", *events, "--as-of", sent, *segments, "--out", str(memberships))
    assert result.exit_code == 0, result.output
    result = invoke(runner, "measure", *events, "--memberships", str(memberships), "--as-of", sent,
                    "--category", "yoga", "--by", "loyalty_tier", "--out", str(world / "aa"))  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(world / "aa" / f"as_of={sent}" / "lift.parquet")
    whole = table[table["breakdown"] == ""].set_index("metric")
    # Seeded: the arms are a hash the simulated campaign never saw; no lift in either estimate.
    for metric in ("absolute_lift", "adjusted_absolute_lift"):
        assert whole.loc[metric, "low"] < 0 < whole.loc[metric, "high"]
    # The page: self-contained, both charts render in a real (headless) browser.
    html = (world / "aa" / f"as_of={sent}" / "lift.html").read_text()
    assert "Did the campaign change anything?" in html and not re.search(r"(src|href)=\"(?!data:)", html)
    rendered = _rendered_in_browser(world / "aa" / f"as_of={sent}" / "lift.html")
    assert len(rendered) == 2 and all(i["complete"] and i["width"] > 0 for i in rendered), rendered
    tiers = table[table["breakdown"] == "loyalty_tier"]
    assert (
        set(tiers["group"]) <= {"none", "bronze", "silver", "gold", "(missing)"}
        and len(set(tiers["group"])) > 1
    )
    plan = ["--plan", "--expected-lift", "0.03"]
    result = invoke(runner, "measure", *plan, "--memberships", str(memberships), "--as-of", sent, *segments)
    planned = plan_holdouts(memberships, dt.date.fromisoformat(sent), world / "segments.yaml", 0.03)[
        "known_customers"
    ]
    assert result.exit_code == 0 and f"{planned.minimum_detectable_lift:.2%}" in result.output
    assert f"{planned.holdout_needed:,}" in result.output and planned.holdout == round(0.2 * planned.audience)


def test_a_destinations_holdout_is_measured_from_the_cli(runner, world, tmp_path):
    sent = _sent(world)["sent"]
    (tmp_path / "segments.yaml").write_text(
        "segments:\n  - {name: known_customers, rule: 'is_known = 1'}\n"  # no holdout of its own
    )
    (tmp_path / "destinations.yaml").write_text(
        "destinations:\n  - {name: crm, identities: [crm_id], marketing_action: email,"
        " segments: [known_customers], holdout: 0.25, holdout_minimum: 300}\n"
    )
    events, memberships = ["--events", str(world / "ingested")], ["--memberships", str(tmp_path / "m")]
    result = invoke(runner, "segments", *events, "--as-of", sent, "--segments",
                    str(tmp_path / "segments.yaml"), "--out", str(tmp_path / "m"))  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke(runner, "export", *memberships, "--as-of", sent, "--destinations",
                    str(tmp_path / "destinations.yaml"), "--out", str(tmp_path / "exports"))  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke(runner, "measure", *events, *memberships, "--as-of", sent, "--category", "yoga",
                    "--destination", "crm", "--out", str(tmp_path / "lift"))  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "lift" / f"as_of={sent}" / "lift.json").read_text())
    manifest = json.loads(
        next((tmp_path / "exports" / "destination=crm").glob("as_of=*/manifest.json")).read_text()
    )["segments"]["known_customers"]
    sizes = written["sizes"]["known_customers"]
    assert sizes["holdout"] == manifest["withheld_destination_holdout"] > 300
    assert sizes["targeted"] == manifest["profiles"]  # every crm_id holder the destination received
    assert set(written["contamination"]["known_customers"]) >= {"merged_across_arms", "shared_identities"}
    whole = pd.read_parquet(tmp_path / "lift" / f"as_of={sent}" / "lift.parquet").query("breakdown == ''")
    lift = whole.set_index("metric").loc["absolute_lift"]
    assert lift["low"] < 0 < lift["high"]  # an A/A split the simulated campaign never saw
    missing = invoke(runner, "measure", *events, *memberships, "--as-of", sent, "--destination", "sms")
    assert missing.exit_code == 2 and "declare `holdout:` on the destination" in missing.output


def test_measuring_before_the_horizon_or_without_arms_is_one_line(runner, world, tmp_path):
    events = ["--events", str(world / "ingested")]
    early = invoke(
        runner, "measure", *events, "--memberships", str(world / "segments"), "--as-of", "2025-05-20"
    )
    assert early.exit_code == 2 and "measure after the horizon" in early.output
    bad = tmp_path / "arms.csv"
    bad.write_text("crm_id,arm\nC100001,control\n")
    wrong = invoke(runner, "measure", *events, "--arms", str(bad), "--as-of", _sent(world)["sent"])
    assert (
        wrong.exit_code == 2
        and "needs an `arm` column of targeted/holdout (found ['control'])" in wrong.output
    )


def test_outcomes_go_to_the_member_of_the_first_namespace_and_cross_arm_events_are_counted():
    from propensity.pipeline.jobs.measure import attribute_outcomes

    members = pd.DataFrame(
        {"profile_id": ["a", "b", "c"], "segment": "s", "arm": ["targeted", "holdout", "targeted"]}
    )
    identities = pd.DataFrame(
        {
            "profile_id": ["a", "a", "b", "b", "c"],
            "namespace": ["crm_id", "email_sha256", "crm_id", "email_sha256", "crm_id"],
            "value": ["C1", "home", "C2", "home", "C3"],
        }
    )
    outcomes = pd.DataFrame(
        {
            "revenue": [10.0, 20.0, 5.0, 7.0],
            "crm_id": ["C1", None, "C2", "C9"],  # the second event only carries the shared e-mail
            "email_sha256": ["home", "home", None, None],
        }
    )
    joined, contaminated = attribute_outcomes(outcomes, identities, members, ["crm_id", "email_sha256"])
    got = joined.set_index("profile_id")
    # crm_id wins over e-mail; the e-mail-only event goes to one of its two profiles (first by id).
    assert (
        got.loc["a", "revenue"] == 30.0 and got.loc["b", "revenue"] == 5.0 and got.loc["c", "revenue"] == 0.0
    )
    assert list(got["converted"]) == [True, True, False]
    assert contaminated == 2  # both events carrying `home` reach members of both arms
