"""Labels, populations and snapshots from model configs."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from propensity.core.config import ModelConfig, OutcomeConfig, ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build import parse_rule, population_rule, snapshot_dates, sql_compiler
from propensity.features.build.model_frames import labelled_sql
from propensity.features.connection import relation_columns
from propensity.pipeline.jobs.config_files import load_model_config
from tests.conftest import invoke
from tests.test_features import AS_OF, FS, connection, event


def labels(rows, outcome: OutcomeConfig, as_of=AS_OF) -> pd.Series:
    con = connection(rows)
    frame = con.execute(
        labelled_sql(sql_compiler.snapshot_sql(FS, as_of, relation_columns(con, "profiles")), outcome)
    ).df()
    return frame.set_index("profile_id")["label"]


HISTORY = [
    event(10, "page_view", profile="p1"),
    event(10, "page_view", profile="p2"),
    event(10, "purchase", profile="p3", revenue=50.0),
]


def test_event_exactly_at_as_of_counts_for_the_label_not_the_features():
    rows = [*HISTORY, event(0, "purchase", profile="p1", revenue=20.0, hour=0)]
    assert labels(rows, OutcomeConfig()).to_dict() == {"p1": 1, "p2": 0, "p3": 0}
    features = sql_compiler.build_snapshot(connection(rows), FS, AS_OF).set_index("profile_id")
    assert features.loc["p1", "purchase_count_7d"] == 0


def test_horizon_is_half_open():
    inside = [*HISTORY, event(-29, "purchase", profile="p1", revenue=20.0, hour=23)]
    outside = [*HISTORY, event(-30, "purchase", profile="p1", revenue=20.0, hour=0)]
    assert labels(inside, OutcomeConfig(horizon_days=30))["p1"] == 1
    assert labels(outside, OutcomeConfig(horizon_days=30))["p1"] == 0


def test_category_revenue_churn_and_above_usual_order_value():
    rows = [
        *HISTORY,
        event(-3, "purchase", profile="p1", revenue=20.0, product_category="running"),
        event(-3, "purchase", profile="p2", revenue=200.0, product_category="yoga"),
        event(-3, "purchase", profile="p3", revenue=40.0, product_category="yoga"),
    ]
    assert labels(rows, OutcomeConfig(category="yoga")).to_dict() == {"p1": 0, "p2": 1, "p3": 1}
    assert labels(rows, OutcomeConfig(min_revenue=100)).to_dict() == {"p1": 0, "p2": 1, "p3": 0}
    assert labels(rows, OutcomeConfig(occurs=False, category="yoga")).to_dict() == {"p1": 1, "p2": 0, "p3": 0}
    # p3 usually spends 50: a 40 order is not above their usual.
    assert labels(rows, OutcomeConfig(above_average_order_value=True)).to_dict() == {
        "p1": 1,
        "p2": 1,
        "p3": 0,
    }


def test_snapshot_dates_end_their_horizon_by_the_cutoff():
    dates = snapshot_dates(dt.date(2025, 12, 31), horizon_days=30, count=4, spacing_days=21)
    assert dates == [dt.date(2025, 12, 1) - dt.timedelta(days=21 * i) for i in (3, 2, 1, 0)]
    assert all(d + dt.timedelta(days=30) <= dt.date(2025, 12, 31) for d in dates)


def test_population_rules_are_checked_not_evaluated():
    model = ModelConfig(name="m", population="days_since_last_event <= 45 AND purchase_count_365d = 0")
    assert "days_since_last_event" in population_rule(model, FS).columns
    with pytest.raises(UserError, match="unknown column `days_since_lunch`"):
        population_rule(ModelConfig(name="m", population="days_since_lunch < 3"), FS)
    with pytest.raises(UserError, match="not allowed"):
        parse_rule("is_known = 1 OR (SELECT 1) = 1", FS.names(), "rule")
    with pytest.raises(UserError, match="not allowed"):
        parse_rule("__import__('os') = 1", FS.names(), "rule")
    with pytest.raises(UserError, match="cannot parse"):
        parse_rule("is_known = = 1", FS.names(), "rule")


def test_shipped_model_configs_load_and_bad_ones_are_named(tmp_path):
    project = ProjectConfig()
    for name in ("conversion", "upsell", "churn"):
        model = load_model_config(name, project)
        population_rule(model, FS)
    assert load_model_config("churn", project).outcome.occurs is False
    assert load_model_config("upsell", project).outcome.category == "yoga"
    bad = tmp_path / "m.yaml"
    bad.write_text(
        "population: 'is_known = 1'\noutcome: {horizon_days: soon}\n"
        "training: {lightgbm: {is_unbalance: true}}\n"
    )
    with pytest.raises(UserError) as error:
        load_model_config(str(bad), project)
    assert "outcome.horizon_days" in str(error.value) and "is_unbalance" in str(error.value)
    with pytest.raises(UserError, match="unknown model 'nope'"):
        load_model_config("nope", project)


def test_features_cli_writes_population_labels_and_feature_labels(luma_small, tmp_path, runner):
    from propensity.pipeline.jobs.features import read_feature_metadata

    out = tmp_path / "f.parquet"
    result = invoke(
        runner,
        "features",
        "--events",
        str(luma_small),
        "--as-of",
        "2025-07-01",
        "--model",
        "conversion",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["days_since_last_event"].max() <= 45 and frame["purchase_count_365d"].max() == 0
    assert set(frame["label"]) == {0, 1}
    meta = read_feature_metadata(out)
    assert meta["labels"]["add_to_cart_count_7d"] == "Add to cart events, last 7 days"
    # Too late for the horizon: features but no labels.
    late = invoke(runner, "features", "--events", str(luma_small), "--model", "conversion", "--out", str(out))
    assert "horizon has not passed" in " ".join(late.output.split())
    assert "label" not in pd.read_parquet(out).columns


def test_sensitive_features_are_refused_and_bad_names_fail_early():
    from propensity.core.config import ModelConfig
    from propensity.features.build import model_features

    def chosen(model: ModelConfig) -> dict[str, str]:
        return model_features(FS, model.features, model.governance, model.name)

    names = chosen(ModelConfig(name="m", governance={"sensitive_features": ["loyalty_tier"]}))
    assert "loyalty_tier" not in names and "tenure_days" in names
    included = ModelConfig(
        name="m",
        governance={"sensitive_features": ["loyalty_tier"]},
        features={"include": ["loyalty_tier", "profile"]},
    )
    with pytest.raises(UserError, match="`loyalty_tier` is labelled sensitive"):
        chosen(included)
    with pytest.raises(UserError, match="unknown feature or family `days_since_lunch`"):
        chosen(ModelConfig(name="m", features={"exclude": ["days_since_lunch"]}))
