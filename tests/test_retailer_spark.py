"""The retailer's own data (tests/retailer_data.py) on Spark against DuckDB: the ingest (event
types renamed, orders grouped, line-item warning), the learned event types, the traits seen
point in time and the order features, and labels of a custom outcome and of an order-value
outcome are equal (counts and ids exactly, floats within 1e-9).

Run with ``make test-spark`` (``pytest -m spark``); skipped only when pyspark or Java is missing.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from tests.spark_env import ENGINE, require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import ModelConfig, ProjectConfig  # noqa: E402
from propensity.features.spark.session import to_pandas  # noqa: E402
from propensity.pipeline.jobs import events as event_jobs  # noqa: E402
from propensity.pipeline.jobs import ingest as ingest_jobs  # noqa: E402
from tests.retailer_data import write_retailer  # noqa: E402
from tests.test_retailer import TRAITS  # noqa: E402
from tests.test_spark import assert_same_rows  # noqa: E402

SETTINGS = {
    "ingest": {"event_type_mapping": {"app_open": "app_launch"}},
    # Few windows and fixed categories: Spark compiles every query it meets.
    "features": {"windows_days": [30, 90], "categories": ["produce", "dairy"], "traits": TRAITS},
}
DUCK = ProjectConfig.model_validate(SETTINGS)
SPARK = ProjectConfig.model_validate({**SETTINGS, "engine": ENGINE.model_dump()})
AS_OF = dt.date(2024, 4, 1)


@pytest.fixture(scope="module")
def shops(tmp_path_factory):
    """The same small retailer ingested by both engines (with order ids), and validated
    without them."""
    root = tmp_path_factory.mktemp("retailer_spark")
    write_retailer(root / "raw", households=150, days=150, seed=5)
    write_retailer(root / "lines", households=150, days=150, seed=5, order_ids=False)
    summaries = {
        "spark": ingest_jobs.ingest(root / "raw", root / "spark", SPARK),
        "duckdb": ingest_jobs.ingest(root / "raw", root / "duckdb", DUCK),
    }
    unordered = {
        "spark": ingest_jobs.validate(root / "lines", SPARK),
        "duckdb": ingest_jobs.validate(root / "lines", DUCK),
    }
    return root, summaries, unordered


def test_ingest_groups_orders_and_renames_types_as_duckdb(shops):
    root, summaries, unordered = shops
    assert summaries["spark"] == summaries["duckdb"]
    assert summaries["duckdb"].orders < summaries["duckdb"].purchase_rows
    assert "app_launch" in summaries["duckdb"].events_by_type
    assert unordered["spark"].warnings == unordered["duckdb"].warnings != []
    for table, keys in (("events", ["event_id"]), ("profiles", ["profile_id"])):
        got = duckdb.sql(f"SELECT * FROM read_parquet('{root / 'spark' / table}.parquet/*.parquet')")
        expected = duckdb.sql(f"SELECT * FROM read_parquet('{root / 'duckdb' / table}.parquet')")
        assert got.dtypes == expected.dtypes, table
        assert_same_rows(got.df(), expected.df(), keys)
    events = duckdb.sql(f"SELECT * FROM read_parquet('{root / 'duckdb' / 'events'}.parquet')").df()
    assert (events["order_lines"] > 1).sum() > 50 and (events["order_lines"] == 0).sum() > 50


def test_learned_types_traits_and_orders_in_snapshots_equal_duckdbs(shops):
    root, _, _ = shops
    spark_events = event_jobs.load_events(root / "spark", SPARK)
    duck_events = event_jobs.load_events(root / "duckdb", DUCK)
    spark_fs = event_jobs.feature_set(spark_events, SPARK, before=AS_OF)
    duck_fs = event_jobs.feature_set(duck_events, DUCK, before=AS_OF)
    assert spark_fs.event_types == duck_fs.event_types == ["campaign_received", "coupon_redeemed"]
    got = to_pandas(spark_events.snapshot(spark_fs, AS_OF))
    expected = duck_events.frame(duck_events.snapshot(duck_fs, AS_OF))
    for column in ("event_coupon_redeemed_count_90d", "days_since_last_event_campaign_received"):
        assert expected[column].notna().sum() > 30 and expected[column].nunique() > 2, column
    assert expected["store_region"].notna().any() and expected["store_region"].isna().any()
    assert expected["household_size"].notna().any()
    assert_same_rows(got, expected, ["profile_id"])


@pytest.mark.parametrize(
    "outcome",
    [
        {"event_type": "coupon_redeemed", "horizon_days": 30},
        {"event_type": "purchase", "min_revenue": 40, "horizon_days": 30},
        {"event_type": "purchase", "above_average_order_value": True, "horizon_days": 30},
    ],
)
def test_labels_of_custom_and_order_value_outcomes_equal_duckdbs(shops, outcome):
    root, _, _ = shops
    model = ModelConfig.model_validate(
        {"name": "m", "population": "days_since_last_event <= 60", "outcome": outcome}
    )
    frames = []
    for directory, config in ((root / "spark", SPARK), (root / "duckdb", DUCK)):
        loaded = event_jobs.load_events(directory, config)
        fs = event_jobs.feature_set(loaded, config, before=AS_OF)
        relation, labelled = loaded.population_snapshot(fs, model, AS_OF, loaded.data_end())
        assert labelled
        frames.append(loaded.frame(relation))
    got, expected = frames
    assert 10 < expected["label"].sum() < len(expected) - 10
    assert_same_rows(got, expected, ["profile_id"])


def test_segment_rules_on_custom_types_and_traits_equal_duckdbs(shops, tmp_path):
    """Segment rules reading a learned event type's features and declared traits (a sensitive
    one too: rules may read it) qualify the same members on both engines."""
    import pandas as pd

    from propensity.pipeline.jobs import segments as segment_jobs

    root, _, _ = shops
    segments = tmp_path / "segments.yaml"
    segments.write_text(
        "segments:\n"
        "  - name: northern_coupon_fans\n"
        "    rule: event_coupon_redeemed_count_90d >= 1 AND store_region = 'north'\n"
        "  - name: high_income_mailed\n"
        "    rule: income_band = 'high' AND event_campaign_received_count_30d >= 1\n"
        "  - name: big_households\n"
        "    rule: household_size >= 3 AND days_since_last_event_campaign_received <= 60\n"
    )
    no_scores = tmp_path / "scores"
    no_scores.mkdir()
    results = {
        name: segment_jobs.qualify_segments(root / name, no_scores, AS_OF, segments, tmp_path / name, config)
        for name, config in (("duckdb", DUCK), ("spark", SPARK))
    }
    assert results["spark"].segments == results["duckdb"].segments
    assert all(s.size > 3 for s in results["duckdb"].segments), results["duckdb"].segments
    for name in ("memberships.parquet", "identities.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(results["spark"].out / name), pd.read_parquet(results["duckdb"].out / name)
        )
