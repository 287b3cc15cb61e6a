"""Uplift models end to end on the simulated yoga campaign: trained from a past export's arms,
measured against the simulator's true effects, scored with `uplift` and its factors, and read by
a segment rule (`yoga_uplift.uplift >= 0.02`)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from propensity.core.config import ProjectConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.models import tracking as registry
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import segments as segment_jobs
from propensity.pipeline.jobs import train as model_jobs
from propensity.pipeline.jobs.events import load_events
from propensity.pipeline.jobs.uplift import arms_from_events
from tests.conftest import invoke
from tests.uplift_campaign import MODEL, campaign_world

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the 20,000-
# profile campaign world and its trained model) are built once, not once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("uplift_campaign")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return campaign_world(tmp_path_factory.mktemp("campaign"), profiles=20_000)


@pytest.fixture(scope="module")
def trained(world, tracking):
    return model_jobs.train_model(MODEL, world.ingested, world.config(ProjectConfig()), as_of=world.cutoff)


def test_uplift_targeting_beats_propensity_targeting_on_true_effects(trained, world):
    m = trained.metrics
    assert trained.model_family in ("uplift_t", "uplift_x") and set(trained.validation) == {"t", "x"}
    # Only the campaign's members have an arm: every part is theirs, disjoint by profile.
    members = set(world.people["profile_id"])
    assert sum(part["rows"] for part in trained.rows.values()) <= len(members)
    assert m["test_uplift_rows"] == trained.rows["test"]["rows"] > 2000
    # The top 20 % by uplift holds more incremental conversions (the simulator's true effects
    # summed) than the top 20 % by the arm-blind propensity, beyond the interval of the difference.
    assert m["test_true_incremental_top20_uplift_minus_propensity_low"] > 0
    assert m["test_true_incremental_top20_by_uplift"] > m["test_true_incremental_top20_by_propensity_high"]
    # The Qini is reported against the oracle's (the same rows ranked by their true effects).
    assert 0 < m["test_qini"] < m["test_oracle_qini"]
    assert m["test_qini_low"] <= m["test_qini"] <= m["test_qini_high"]
    logged = MlflowClient().get_run(trained.run_id).data
    assert logged.tags["model_family"] == trained.model_family and "test_oracle_qini" in logged.metrics


def test_scores_carry_uplift_and_a_segment_rule_reads_it(trained, world, tmp_path):
    config = world.config(ProjectConfig())
    run = score_jobs.score_model(
        MODEL, world.ingested, config, world.cutoff, tmp_path / "scores", version=trained.version, factors=3
    )
    table = pd.read_parquet(run.out)
    head = ["profile_id", "model", "model_version", "as_of", "probability", "score", "bucket"]
    assert list(table.columns[:9]) == [*head, "uplift", "factors"]
    assert run.scored == len(table) > 1000 and table["uplift"].notna().all()
    assert any(len(f) == 3 for f in table["factors"])
    # The registered model is the uplift model, loaded through the allow-list.
    model, _ = registry.load_propensity_model(registry.configure(config), MODEL, version=trained.version)
    assert model.predicts_uplift and model.metadata["factor_space"] in ("log_odds", "probability")
    segments = tmp_path / "segments.yaml"
    segments.write_text(
        "segments:\n  - name: persuadable_yoga\n    rule: yoga_uplift.uplift >= 0.02\n"
        "  - name: likely_yoga_buyers\n    rule: yoga_uplift.probability >= 0.3\n"
    )
    result = segment_jobs.qualify_segments(
        world.ingested, tmp_path / "scores", world.cutoff, segments, tmp_path / "members", config
    )
    members = pd.read_parquet(result.out / "memberships.parquet")
    persuadable = set(members[members["segment"] == "persuadable_yoga"]["profile_id"])
    expected = set(table[table["uplift"] >= 0.02]["profile_id"])
    assert 0 < len(persuadable) < len(table)
    # Opted-out profiles are held back; every member has uplift >= 0.02 and most such profiles are members.
    assert persuadable <= expected and len(persuadable) >= 0.8 * len(expected)
    assert np.all(table.set_index("profile_id").loc[sorted(persuadable), "uplift"] >= 0.02)


def test_a_rule_reading_uplift_of_a_propensity_model_is_refused(trained, world, tmp_path):
    config = world.config(ProjectConfig())
    scores = tmp_path / "scores"
    run = score_jobs.score_model(MODEL, world.ingested, config, world.cutoff, scores, version=trained.version)
    # The same partition without its uplift column: what a propensity model writes.
    part = next(run.out.glob("*.parquet"))
    pd.read_parquet(part).drop(columns=["uplift"]).to_parquet(part)
    segments = tmp_path / "segments.yaml"
    segments.write_text("segments:\n  - name: persuadable\n    rule: yoga_uplift.uplift >= 0.02\n")
    with pytest.raises(
        UserError, match=r"rule reads `yoga_uplift.uplift` but model 'yoga_uplift' is not an uplift"
    ):
        segment_jobs.qualify_segments(world.ingested, scores, world.cutoff, segments, tmp_path / "m", config)


def test_arms_from_treatment_events_are_the_targeted_arm(world):
    """A treatment by event: the campaign's `campaign_received` events in the window up to the
    as-of mark exactly the targeted arm treated; the holdout stays control."""
    treatment = TreatmentConfig(event_type="campaign_received", campaign="luma_yoga", window_days=3)
    as_of = pd.Timestamp(world.sent + dt.timedelta(days=1))
    rows = pd.DataFrame({"profile_id": world.people["profile_id"], "as_of": as_of, "label": 0})
    marked = arms_from_events(load_events(world.ingested, ProjectConfig()), treatment, rows)
    assert (marked.index == rows.index).all()
    assert (marked["treated"] == (world.people["arm"] == "targeted").astype(int).to_numpy()).all()


def test_train_from_the_cli_prints_the_uplift_figures(world, tracking, tmp_path, runner):
    project = tmp_path / "project.yaml"
    project.write_text(f"models_dir: {world.models_dir}\n")
    result = invoke(
        runner, "train", MODEL, "--events", str(world.ingested), "--as-of", str(world.cutoff),
        "--config", str(project),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for words in (
        "Qini coefficient",
        "true effects",
        "uplift targeting - propensity",
        "best validation Qini",
    ):
        assert words in " ".join(result.output.split()), words
