"""Uplift on Spark against DuckDB: the treated profiles per snapshot (one SQL, transpiled) and the
scores of a registered uplift model (`uplift` and its factors) are the same on both engines."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tests.spark_env import ENGINE, require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import ProjectConfig, TreatmentConfig  # noqa: E402
from propensity.pipeline.jobs import score as score_jobs  # noqa: E402
from propensity.pipeline.jobs import train as model_jobs  # noqa: E402
from propensity.pipeline.jobs.events import load_events  # noqa: E402
from tests.uplift_campaign import MODEL, campaign_world  # noqa: E402

# Fewer features than the registry's default: Spark compiles each aggregate it meets.
LIGHT = {"features": {"windows_days": [30, 365], "categories": ["yoga", "running"]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return campaign_world(tmp_path_factory.mktemp("campaign"), profiles=6_000, seed=5)


def test_treated_profiles_equal_duckdbs(world):
    treatment = TreatmentConfig(event_type="campaign_received", campaign="luma_yoga", window_days=3)
    dates = [world.sent - dt.timedelta(days=1), world.sent, world.sent + dt.timedelta(days=2)]
    got = load_events(world.ingested, ProjectConfig(engine=ENGINE)).treated(treatment, dates)
    expected = load_events(world.ingested, ProjectConfig()).treated(treatment, dates)
    targeted = set(world.people.loc[world.people["arm"] == "targeted", "profile_id"])
    assert set(expected.loc[expected["as_of"] == pd.Timestamp(world.sent), "profile_id"]) == targeted
    assert (expected["as_of"] != pd.Timestamp(dates[0])).all()  # before the send: nobody
    key = ["as_of", "profile_id"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), expected.sort_values(key).reset_index(drop=True)
    )


def test_uplift_scores_and_factors_equal_duckdbs(world, tracking, tmp_path):
    duck = world.config(ProjectConfig(**LIGHT))
    spark = world.config(ProjectConfig(engine=ENGINE, **LIGHT))
    trained = model_jobs.train_model(MODEL, world.ingested, duck, as_of=world.cutoff)
    runs = {
        name: score_jobs.score_model(
            MODEL, world.ingested, config, world.cutoff, tmp_path / name, version=trained.version, factors=3
        )
        for name, config in (("spark", spark), ("duckdb", duck))
    }
    assert runs["spark"].scored == runs["duckdb"].scored > 1000
    got, expected = (
        pd.read_parquet(runs[name].out).sort_values("profile_id").reset_index(drop=True)
        for name in ("spark", "duckdb")
    )
    assert list(got.columns) == list(expected.columns) and "uplift" in got.columns
    plain = [c for c in expected.columns if c not in ("factors", "scored_at", "probability", "uplift")]
    pd.testing.assert_frame_equal(got[plain], expected[plain])
    for column in ("probability", "uplift"):
        assert np.allclose(got[column], expected[column], rtol=0, atol=1e-9)
    assert any(len(f) == 3 for f in expected["factors"])
    for mine, theirs in zip(got["factors"], expected["factors"], strict=True):
        assert [f["feature"] for f in mine] == [f["feature"] for f in theirs]
        assert np.allclose([f["impact"] for f in mine], [f["impact"] for f in theirs], rtol=0, atol=1e-9)
