"""A store-plus-campaigns retailer's own data (tests/retailer_data.py): line items grouped by
order_id, custom event types (campaign_received, coupon_redeemed), a source type renamed on
ingest (app_open -> app_launch) and declared traits. Ingest, train a three-line model whose
outcome is a custom type, score, and segment on a custom-type feature and a trait."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.models import tracking as mlflow_tracking
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import score as score_jobs
from propensity.pipeline.jobs import segments as segment_jobs
from propensity.pipeline.jobs import train as model_jobs
from tests.retailer_data import retailer, write_retailer

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the retailer's
# ingest and its trained model) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("retailer")

MODEL = """name: coupon_redeemer
population: "days_since_last_event <= 120"
outcome: {event_type: coupon_redeemed, horizon_days: 30}
training: {candidates: [lightgbm], tuning: {trials: 3}}
"""
# (The fourth line keeps LightGBM alone, so the model's columns are every selected feature: the
# logistic family reads log RFM only and BG/NBD its three inputs, and either may win the blend;
# and searches 3 trials, not 12: what these tests check is not the search.)
TRAITS = {
    "age_band": {"kind": "categorical", "governance": "standard"},
    "household_size": {"kind": "numeric", "governance": "standard"},
    "store_region": {"kind": "categorical", "governance": "standard"},
    "income_band": {"kind": "categorical", "governance": "sensitive"},
}
AS_OF = dt.date(2024, 10, 1)


def retailer_config(root) -> ProjectConfig:
    models = root / "models"
    models.mkdir(exist_ok=True)
    (models / "coupon_redeemer.yaml").write_text(MODEL)
    return ProjectConfig.model_validate(
        {
            "models_dir": str(models),
            "work_dir": str(root / "work"),
            "ingest": {"event_type_mapping": {"app_open": "app_launch"}},
            "features": {"traits": TRAITS},
        }
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("retailer")
    write_retailer(root / "raw")
    config = retailer_config(root)
    summary = ingest_jobs.ingest(root / "raw", root / "ingested", config)
    return root, config, summary


@pytest.fixture(scope="module")
def snapshot(shop):
    root, config, _ = shop
    loaded = event_jobs.load_events(root / "ingested", config)
    fs = event_jobs.feature_set(loaded, config, before=AS_OF)
    return fs, loaded.frame(loaded.snapshot(fs, AS_OF)).set_index("profile_id")


@pytest.fixture(scope="module")
def trained(shop, tracking):
    root, config, _ = shop
    return model_jobs.train_model("coupon_redeemer", root / "ingested", config)


def _crm_ids(shop) -> pd.Series:
    """profile_id -> crm_id of the ingested profiles."""
    root, config, _ = shop
    loaded = event_jobs.load_events(root / "ingested", config)
    rows = loaded.con.execute("SELECT profile_id, value FROM identity_map WHERE namespace = 'crm_id'").df()
    return rows.set_index("profile_id")["value"]


def test_ingest_counts_orders_and_renames_the_mapped_type(shop):
    _, _, summary = shop
    events, _ = retailer()
    lines = events[events["event_type"] == "purchase"]
    assert summary.purchase_rows == len(lines) and summary.orders == lines["order_id"].nunique()
    assert summary.orders < summary.purchase_rows and summary.warnings == []
    assert summary.events_by_type["app_launch"] == (events["event_type"] == "app_open").sum()
    assert "app_open" not in summary.events_by_type


def test_line_items_without_order_id_are_warned_with_numbers(tmp_path):
    write_retailer(tmp_path / "raw", households=200, days=120, order_ids=False)
    summary = ingest_jobs.validate(tmp_path / "raw", ProjectConfig())
    events, _ = retailer(households=200, days=120)
    lines = events[events["event_type"] == "purchase"]
    shared = lines.groupby(["crm_id", "timestamp"])["sku"].transform("size")
    assert summary.orders is None
    assert summary.warnings == [
        f"{int((shared > 1).sum()):,} of {len(lines):,} purchase rows "
        f"({(shared > 1).sum() / len(lines):.0%}) share their timestamp and profile with another purchase: "
        "line items counted as orders? Give an `order_id` column so the lines of one order count as one "
        "order (purchase counts, order values)"
    ]


def test_order_features_count_orders_and_sum_lines_known_answer(shop, snapshot):
    """purchase_count counts distinct orders, revenue adds every line, the average and largest
    order are per order: computed here from the generated rows."""
    _, frame = snapshot
    events, _ = retailer()
    lines = events[(events["event_type"] == "purchase") & (events["timestamp"] < pd.Timestamp(AS_OF))]
    lines = lines[lines["timestamp"] >= pd.Timestamp(AS_OF) - pd.Timedelta(days=90)]
    orders = lines.groupby(["crm_id", "order_id"])["revenue"].sum().round(2)
    expected = pd.DataFrame(
        {
            "orders": orders.groupby("crm_id").size(),
            "lines": lines.groupby("crm_id").size(),
            "revenue": lines.groupby("crm_id")["revenue"].sum(),
            "largest": orders.groupby("crm_id").max(),
        }
    )
    got = frame.join(_crm_ids(shop).rename("crm_id")).set_index("crm_id").loc[expected.index]
    assert (got["purchase_count_90d"] == expected["orders"]).all()
    assert (expected["lines"] > expected["orders"]).mean() > 0.9  # the test means something
    pd.testing.assert_series_equal(
        got["revenue_sum_90d"].astype(float), expected["revenue"], check_names=False
    )
    pd.testing.assert_series_equal(
        got["average_order_value_90d"], expected["revenue"] / expected["orders"], check_names=False
    )
    pd.testing.assert_series_equal(got["max_order_value_90d"], expected["largest"], check_names=False)


def test_custom_types_are_learned_with_labels_and_traits_are_point_in_time(shop, snapshot):
    fs, frame = snapshot
    assert fs.event_types == ["campaign_received", "coupon_redeemed"]  # app_open was renamed
    labels = fs.labels()
    assert labels["event_coupon_redeemed_count_90d"] == "Coupon redeemed events, last 90 days"
    assert labels["days_since_last_event_campaign_received"] == "Days since the last campaign received event"
    for column in ("event_campaign_received_count_365d", "event_coupon_redeemed_active_days_365d"):
        assert frame[column].nunique() > 3 and (frame[column] > 0).mean() > 0.2, column
    assert frame["app_launch_count_365d"].sum() > 0
    # Traits: seen only when the profile row was set before the as-of date.
    _, profiles = retailer()
    profiles = profiles.set_index("crm_id")
    got = frame.join(_crm_ids(shop).rename("crm_id")).set_index("crm_id")
    seen = pd.to_datetime(profiles.loc[got.index, "updated_at"]) < pd.Timestamp(AS_OF)
    assert 0.1 < seen.mean() < 0.95
    assert got.loc[~seen.to_numpy(), "store_region"].isna().all()
    assert (
        got.loc[seen.to_numpy(), "store_region"] == profiles.loc[got.index[seen.to_numpy()], "store_region"]
    ).all()
    assert (
        got.loc[seen.to_numpy(), "household_size"]
        == profiles.loc[got.index[seen.to_numpy()], "household_size"]
    ).all()
    assert got["income_band"].notna().any()  # sensitive: carried for rules


def test_three_line_model_on_a_custom_outcome_trains_scores_and_segments(shop, trained, tracking):
    root, config, _ = shop
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(config), "coupon_redeemer", version=trained.version
    )
    assert model.metadata["event_types"] == ["campaign_received", "coupon_redeemed"]
    names = set(model.feature_names)
    assert {"event_coupon_redeemed_count_90d", "age_band", "household_size", "store_region"} <= names
    assert "income_band" not in names  # sensitive trait: never a model feature
    assert set(model.categories) >= {"age_band", "store_region"}
    assert trained.metrics["test_auc"] > 0.6 and trained.metrics["test_positives"] >= 50
    scored = score_jobs.score_model(
        "coupon_redeemer", root / "ingested", config, out=root / "scores", version=trained.version
    )
    assert scored.scored > 300
    segments = root / "segments.yaml"
    segments.write_text(
        "segments:\n"
        "  - name: northern_coupon_fans\n"
        "    rule: coupon_redeemer.score >= 50 AND event_coupon_redeemed_count_90d >= 1 "
        "AND store_region = 'north'\n"
        "  - name: high_income_mailed\n"
        "    rule: income_band = 'high' AND event_campaign_received_count_30d >= 1\n"
    )
    result = segment_jobs.qualify_segments(
        root / "ingested", root / "scores", None, segments, root / "seg", config
    )
    sizes = {s.segment: s for s in result.segments}
    assert sizes["northern_coupon_fans"].size > 10 and sizes["high_income_mailed"].size > 10


def test_a_sensitive_trait_is_refused_when_a_model_includes_it(shop, tmp_path):
    root, config, _ = shop
    (tmp_path / "m.yaml").write_text(
        MODEL.replace("coupon_redeemer", "m") + "features: {include: [income_band]}\n"
    )
    refusing = config.model_copy(update={"models_dir": str(tmp_path)})
    with pytest.raises(UserError, match=r"feature `income_band` is labelled sensitive \(features.traits\)"):
        model_jobs.train_model("m", root / "ingested", refusing)


def test_a_declared_trait_missing_from_profiles_names_the_column(shop):
    root, config, _ = shop
    traits = {**TRAITS, "pet_owner": {"kind": "categorical", "governance": "standard"}}
    broken = ProjectConfig.model_validate({**config.model_dump(), "features": {"traits": traits}})
    loaded = event_jobs.load_events(root / "ingested", broken)
    fs = event_jobs.feature_set(loaded, broken, before=AS_OF)
    with pytest.raises(UserError, match=r"features\.traits declares `pet_owner` but the profile attributes"):
        loaded.frame(loaded.snapshot(fs, AS_OF))


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"a": "b", "b": "offer_redeemed"}, "'a' maps to 'b', which is itself mapped to 'offer_redeemed'"),
        ({"a": "b", "b": "a"}, "which is itself mapped to"),
        ({"coupon": "Offer Redeemed"}, "target 'Offer Redeemed' of 'coupon' is not an event type name"),
        ({"coupon": "coupon"}, "'coupon' is mapped to itself"),
    ],
)
def test_event_type_mapping_refuses_chains_cycles_and_bad_targets(mapping, message):
    from propensity.core.config import parse_config

    with pytest.raises(UserError, match=re.escape(message)):
        parse_config(ProjectConfig, {"ingest": {"event_type_mapping": mapping}}, "project.yaml")


@pytest.mark.parametrize("name", ["loyalty_tier", "consent_marketing", "Age Band", "profile_id"])
def test_a_trait_may_not_take_a_reserved_or_invalid_column_name(name):
    from propensity.core.config import parse_config

    with pytest.raises(UserError, match=r"project\.yaml: .*features\.traits"):
        parse_config(
            ProjectConfig,
            {"features": {"traits": {name: {"kind": "numeric", "governance": "standard"}}}},
            "project.yaml",
        )


def test_learned_types_get_unique_column_names_and_none_when_turned_off():
    from propensity.features.build.registry import build_registry

    config = ProjectConfig().features
    fs = build_registry(config, [], event_types=["Coupon Redeemed", "coupon_redeemed", "web.formFilledOut"])
    names = fs.names()
    assert {"event_coupon_redeemed_count_30d", "event_coupon_redeemed_2_count_30d"} <= set(names)
    assert "days_since_last_event_web_formfilledout" in names
    assert fs.labels()["event_web_formfilledout_count_7d"] == "Web formfilledout events, last 7 days"
    assert names[: len(build_registry(config, []).names())] == build_registry(config, []).names()
    assert build_registry(config, [], event_types=[]).names() == build_registry(config, []).names()


def test_an_ingest_written_before_orders_reads_one_row_as_one_order(shop, tmp_path):
    """An ingest directory without order_lines / order_revenue (written before orders were
    grouped) still loads: every purchase row counts as an order, as it did."""
    import shutil

    import duckdb

    root, config, _ = shop
    old = tmp_path / "old"
    shutil.copytree(root / "ingested", old)
    events = old / "events.parquet"
    duckdb.sql(f"SELECT * EXCLUDE (order_lines, order_revenue) FROM read_parquet('{events}')").write_parquet(
        str(tmp_path / "events.parquet")
    )
    shutil.move(tmp_path / "events.parquet", events)
    loaded = event_jobs.load_events(old, config)
    fs = event_jobs.feature_set(loaded, config, before=AS_OF).select(include=["purchase_count_90d"])
    frame = loaded.frame(loaded.snapshot(fs, AS_OF)).set_index("profile_id")
    lines = _retailer_lines().groupby("crm_id").size()
    got = frame.join(_crm_ids(shop).rename("crm_id")).set_index("crm_id").loc[lines.index]
    assert (got["purchase_count_90d"] == lines).all()


def _retailer_lines() -> pd.DataFrame:
    """The purchase lines of the 90 days before AS_OF."""
    events, _ = retailer()
    stamp = events["timestamp"]
    window = (stamp < pd.Timestamp(AS_OF)) & (stamp >= pd.Timestamp(AS_OF) - pd.Timedelta(days=90))
    return events[window & (events["event_type"] == "purchase")]


@pytest.mark.parametrize(("limit", "learned"), [(0, []), (1, ["campaign_received"])])
def test_max_learned_event_types_caps_the_learned_list(shop, limit, learned):
    root, config, _ = shop
    capped = ProjectConfig.model_validate(
        {**config.model_dump(), "features": {"traits": TRAITS, "max_learned_event_types": limit}}
    )
    loaded = event_jobs.load_events(root / "ingested", capped)
    fs = event_jobs.feature_set(loaded, capped, before=AS_OF)
    assert fs.event_types == learned
    assert [f.family for f in fs.features].count("learned_event") == len(learned) * (2 * 4 + 1)
