"""`measure` on Spark against DuckDB on the same simulated yoga campaign: the same table (arms'
sizes, rates, lifts, intervals with the same seed, adjusted figures) from the campaign's own arms
file and from a holdout segment qualified on Spark; the Spark wing goes through the engine seam
(`engine_for`), nothing in the measure job names an engine."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from tests.spark_env import ENGINE, require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import ProjectConfig  # noqa: E402
from propensity.features.synthetic import GeneratorSettings, generate  # noqa: E402
from propensity.features.synthetic.world import LUMA_YOGA  # noqa: E402
from propensity.pipeline.jobs import ingest as ingest_jobs  # noqa: E402
from propensity.pipeline.jobs import measure as measure_jobs  # noqa: E402
from propensity.pipeline.jobs import segments as segment_jobs  # noqa: E402

# The default covariates (purchase_count_90d, revenue_sum_90d, revenue_sum_365d) and no more.
LIGHT = {"features": {"windows_days": [90, 365], "categories": ["yoga"]}}
SPARK, DUCKDB = ProjectConfig(engine=ENGINE, **LIGHT), ProjectConfig(**LIGHT)
SEGMENTS = (
    "segments:\n"
    "  - {name: known, rule: 'is_known = 1', holdout: 0.2, holdout_minimum: 200, holdout_salt: yoga}\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tracking):
    root = tmp_path_factory.mktemp("measure_spark")
    generate(GeneratorSettings(profiles=4000, days=150, seed=21, campaigns=(LUMA_YOGA,)), root / "raw")
    ingest_jobs.ingest(root / "raw", root / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    campaign = json.loads((root / "raw" / "ground_truth" / "campaigns.json").read_text())[0]
    return root, campaign


def _request(campaign: dict, **more) -> measure_jobs.MeasureRequest:
    return measure_jobs.MeasureRequest(
        as_of=dt.date.fromisoformat(campaign["sent"]),
        horizon_days=campaign["horizon_days"],
        category=campaign["category"],
        resamples=300,
        seed=7,
        **more,
    )


def _same_tables(spark: measure_jobs.MeasureResult, duck: measure_jobs.MeasureResult) -> None:
    assert spark.sizes == duck.sizes and spark.contamination == duck.contamination
    assert spark.covariates == duck.covariates == list(measure_jobs.DEFAULT_COVARIATES)
    keys = ["segment", "breakdown", "group", "metric", "targeted", "holdout"]
    pd.testing.assert_frame_equal(spark.table[keys], duck.table[keys])
    for column in ("estimate", "low", "high", "p_value"):
        assert np.allclose(spark.table[column], duck.table[column], rtol=1e-9, atol=1e-9, equal_nan=True)


def test_measure_from_an_arms_file_equals_duckdbs(world, tmp_path):
    root, campaign = world
    arms = root / "raw" / "ground_truth" / "campaign_people.parquet"
    runs = {
        name: measure_jobs.measure(
            root / "ingested", None, tmp_path / name, _request(campaign, cost=500.0), config, arms_file=arms
        )
        for name, config in (("spark", SPARK), ("duckdb", DUCKDB))
    }
    _same_tables(runs["spark"], runs["duckdb"])
    figures = runs["spark"].table.set_index("metric")
    assert figures.loc["absolute_lift", "low"] > 0  # the campaign works, on either engine
    assert {"incremental_revenue", "adjusted_incremental_revenue", "return_on_spend"} <= set(figures.index)


def test_measure_of_a_holdout_segment_qualified_on_spark_equals_duckdbs(world, tmp_path):
    root, campaign = world
    (root / "segments.yaml").write_text(SEGMENTS)
    sent = dt.date.fromisoformat(campaign["sent"])
    for name, config in (("spark", SPARK), ("duckdb", DUCKDB)):
        segment_jobs.qualify_segments(
            root / "ingested",
            tmp_path / "no_scores",
            sent,
            root / "segments.yaml",
            tmp_path / f"seg_{name}",
            config,
        )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "seg_spark" / f"as_of={sent}" / "memberships.parquet"),
        pd.read_parquet(tmp_path / "seg_duckdb" / f"as_of={sent}" / "memberships.parquet"),
    )
    request = _request(campaign, breakdowns=("loyalty_tier",))
    runs = {
        name: measure_jobs.measure(
            root / "ingested", tmp_path / f"seg_{name}", tmp_path / f"lift_{name}", request, config
        )
        for name, config in (("spark", SPARK), ("duckdb", DUCKDB))
    }
    _same_tables(runs["spark"], runs["duckdb"])
    assert set(runs["spark"].table["breakdown"]) == {"", "loyalty_tier"}
    for name in ("lift.parquet", "lift.json", "lift.html"):
        assert (runs["spark"].out / name).is_file()
