"""Journeys on Spark against DuckDB: the same SQL in each dialect gives the same units, paths and
touchpoints, so the same funnels, flows and credit (exactly: the figures after the query are
shared numpy).

Run with ``make test-spark`` (``pytest -m spark``); skipped only when pyspark or Java is missing.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.spark_env import require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import EngineConfig, ProjectConfig  # noqa: E402
from propensity.features.journeys import DuckDBRunner, parse_exclusion, parse_steps  # noqa: E402
from propensity.features.journeys.attribution import attribute  # noqa: E402
from propensity.features.journeys.funnel import run_funnel, summarise  # noqa: E402
from propensity.features.journeys.funnel_sql import FunnelSpec  # noqa: E402
from propensity.features.journeys.paths import run_paths  # noqa: E402
from propensity.features.journeys.touches import run_touches  # noqa: E402
from propensity.features.spark.journeys import SparkRunner  # noqa: E402
from propensity.features.spark.session import spark_session  # noqa: E402
from propensity.features.synthetic.journeys import JourneySettings, simulate_journeys  # noqa: E402
from propensity.pipeline.jobs import journeys as journey_jobs  # noqa: E402
from tests.test_journeys import SHOP, at, events_frame  # noqa: E402

ENGINE = EngineConfig(
    name="spark",
    spark={
        "master": "local[2]",
        "app_name": "propensity-tests",
        "shuffle_partitions": 2,
        "conf": {"spark.ui.enabled": False, "spark.sql.adaptive.enabled": False},
    },
)


@pytest.fixture(scope="module")
def spark():
    session = spark_session(ENGINE)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def both(spark, frame: pd.DataFrame):
    spark.createDataFrame(frame).createOrReplaceTempView("ev")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("ev", frame)
    return SparkRunner(spark), DuckDBRunner(con)


MORE = [
    *SHOP,
    ("f", 0, "product_view", "web", "yoga"),
    ("f", 0.5, "remove_from_cart", "web"),
    ("f", 1, "add_to_cart", "push"),
    ("f", 1, "purchase", "push"),  # same time as the cart: never a later step
    ("f", 2, "purchase", "store"),
    ("g", 990, "product_view", "web", "yoga"),  # open at the end
]


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("ordered", {}),
        ("strict", {}),
        ("any", {}),
        ("ordered", {"session_gap_seconds": 5400}),
        ("ordered", {"exclusions": ("remove_from_cart:1-2",)}),
    ],
)
def test_funnel_units_equal_duckdbs(spark, mode, options):
    sr, dr = both(spark, events_frame(MORE))
    steps = "product_view[category=yoga] > add_to_cart@4h > purchase"
    if mode == "any":
        steps = steps.replace("@4h", "")
    parsed = tuple(parse_steps(steps))
    options = dict(options)
    options["exclusions"] = tuple(parse_exclusion(x, len(parsed)) for x in options.get("exclusions", ()))
    spec = FunnelSpec(parsed, 24 * 3600, mode, **options)
    got, expected = run_funnel(sr, spec, "ev", at(1000)), run_funnel(dr, spec, "ev", at(1000))
    assert got.profile_id.tolist() == expected.profile_id.tolist()
    np.testing.assert_array_equal(got.times, expected.times)
    np.testing.assert_array_equal(got.in_progress, expected.in_progress)
    assert got.first_channel.tolist() == expected.first_channel.tolist()
    pd.testing.assert_frame_equal(summarise(got, spec), summarise(expected, spec))


@pytest.mark.parametrize("direction", ["to", "from"])
def test_paths_equal_duckdbs(spark, direction):
    sr, dr = both(spark, events_frame(MORE))
    target = parse_steps("add_to_cart")[0]
    for by in ("event_type", "channel"):
        got = run_paths(sr, target, "ev", at(1000), direction, 3, by)
        expected = run_paths(dr, target, "ev", at(1000), direction, 3, by)
        pd.testing.assert_frame_equal(got, expected)


def test_attribution_equals_duckdbs(spark):
    sim = simulate_journeys(JourneySettings(profiles=3000, seed=2))
    sr, dr = both(spark, sim.events)
    end = dt.datetime(2025, 3, 1)
    args = (parse_steps("purchase")[0], "ev", end, end - dt.timedelta(days=30), 30 * 86400)
    got, expected = (
        attribute(run_touches(sr, *args), bootstrap=20),
        attribute(run_touches(dr, *args), bootstrap=20),
    )
    pd.testing.assert_frame_equal(got.credit, expected.credit, rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(got.raw, expected.raw, rtol=0, atol=1e-12)
    assert got.conversions == expected.conversions == sim.conversions


def test_funnel_job_on_spark_writes_what_duckdb_writes(spark, luma_small, tmp_path):
    steps = "product_view[category=yoga] > add_to_cart > checkout > purchase"
    common = {"window": "14d", "by": "channel", "track": False}
    on_spark = journey_jobs.run_funnel(
        luma_small, tmp_path / "s", ProjectConfig(engine=ENGINE), steps, **common
    )
    on_duckdb = journey_jobs.run_funnel(luma_small, tmp_path / "d", ProjectConfig(), steps, **common)
    assert on_spark.as_of == on_duckdb.as_of
    pd.testing.assert_frame_equal(on_spark.steps, on_duckdb.steps)
    pd.testing.assert_frame_equal(on_spark.fallout, on_duckdb.fallout)
    assert on_spark.steps["entrants"].iloc[0] > 50
