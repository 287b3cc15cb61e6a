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

from tests.spark_env import ENGINE, require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import ProjectConfig  # noqa: E402
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


@pytest.fixture(scope="module")
def spark():
    session = spark_session(ENGINE)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def both(spark, frame: pd.DataFrame, view: str = "ev"):
    spark.createDataFrame(frame).createOrReplaceTempView(view)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register(view, frame)
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


@pytest.fixture(scope="module")
def shop(spark):
    """The hand-made shop events on both engines, made once for the funnel and path tests (each
    only reads them)."""
    return both(spark, events_frame(MORE))


@pytest.fixture(scope="module")
def spark_ingested(spark, luma_small, tmp_path_factory):
    """luma_small ingested once on Spark (validated, hashed, stitched: the whole Spark chain),
    for every journey job below; DuckDB's side stitches the raw events itself."""
    from propensity.pipeline.jobs import ingest as ingest_jobs

    out = tmp_path_factory.mktemp("journeys_spark") / "ingested"
    ingest_jobs.ingest(luma_small, out, ProjectConfig(engine=ENGINE))
    return out


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
def test_funnel_units_equal_duckdbs(shop, mode, options):
    sr, dr = shop
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
def test_paths_equal_duckdbs(shop, direction):
    sr, dr = shop
    target = parse_steps("add_to_cart")[0]
    for by in ("event_type", "channel"):
        got = run_paths(sr, target, "ev", at(1000), direction, 3, by)
        expected = run_paths(dr, target, "ev", at(1000), direction, 3, by)
        pd.testing.assert_frame_equal(got, expected)


def test_attribution_equals_duckdbs(spark):
    sim = simulate_journeys(JourneySettings(profiles=3000, seed=2))
    sr, dr = both(spark, sim.events, "simulated")
    end = dt.datetime(2025, 3, 1)
    args = (parse_steps("purchase")[0], "simulated", end, end - dt.timedelta(days=30), 30 * 86400)
    got, expected = (
        attribute(run_touches(sr, *args), bootstrap=20),
        attribute(run_touches(dr, *args), bootstrap=20),
    )
    pd.testing.assert_frame_equal(got.credit, expected.credit, rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(got.raw, expected.raw, rtol=0, atol=1e-12)
    assert got.conversions == expected.conversions == sim.conversions


def test_journey_jobs_on_spark_write_what_duckdb_writes(spark, spark_ingested, luma_small, tmp_path):
    """Funnel, paths and attribution jobs on Spark (over Spark's ingest) against DuckDB's (over
    the raw events, stitched in memory): the same tables."""
    steps = "product_view[category=yoga] > add_to_cart > checkout > purchase"
    common = {"window": "14d", "by": "channel", "track": False}
    spark_config = ProjectConfig(engine=ENGINE)
    on_spark = journey_jobs.run_funnel(spark_ingested, tmp_path / "s", spark_config, steps, **common)
    on_duckdb = journey_jobs.run_funnel(luma_small, tmp_path / "d", ProjectConfig(), steps, **common)
    assert on_spark.as_of == on_duckdb.as_of
    pd.testing.assert_frame_equal(on_spark.steps, on_duckdb.steps)
    pd.testing.assert_frame_equal(on_spark.fallout, on_duckdb.fallout)
    assert on_spark.steps["entrants"].iloc[0] > 50

    paths = {"depth": 3, "by": "channel", "track": False}
    spark_paths = journey_jobs.run_paths(spark_ingested, tmp_path / "sp", spark_config, "purchase", **paths)
    duck_paths = journey_jobs.run_paths(luma_small, tmp_path / "dp", ProjectConfig(), "purchase", **paths)
    pd.testing.assert_frame_equal(spark_paths.paths, duck_paths.paths)
    assert len(duck_paths.paths) > 3

    credit = {"lookback": "30d", "since": dt.date(2025, 6, 1), "bootstrap": 10, "track": False}
    spark_credit = journey_jobs.run_attribution(
        spark_ingested, tmp_path / "sa", spark_config, "class_registration", **credit
    )
    duck_credit = journey_jobs.run_attribution(
        luma_small, tmp_path / "da", ProjectConfig(), "class_registration", **credit
    )
    pd.testing.assert_frame_equal(spark_credit.credit, duck_credit.credit, rtol=0, atol=1e-9)
    assert spark_credit.conversions == duck_credit.conversions > 10
