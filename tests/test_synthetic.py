"""The synthetic generator: deterministic, realistic enough to tell the Luma story."""

from __future__ import annotations

import pandas as pd

from propensity.features.synthetic import GeneratorSettings, generate
from tests.conftest import invoke


def _read(directory):
    return pd.read_parquet(directory / "events").sort_values(["event_id", "timestamp"]).reset_index(drop=True)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    settings = GeneratorSettings(profiles=300, days=60, seed=3)
    generate(settings, tmp_path / "a")
    generate(settings, tmp_path / "b")
    generate(GeneratorSettings(profiles=300, days=60, seed=4), tmp_path / "c")
    pd.testing.assert_frame_equal(_read(tmp_path / "a"), _read(tmp_path / "b"))
    assert (tmp_path / "a" / "profiles.csv").read_bytes() == (tmp_path / "b" / "profiles.csv").read_bytes()
    assert len(_read(tmp_path / "a")) != len(_read(tmp_path / "c"))


def test_ground_truth_covers_every_person_and_day(luma_small):
    truth = pd.read_parquet(luma_small / "ground_truth" / "daily_purchase_probability.parquet")
    assert len(truth) == 1500 * 240
    assert truth["probability"].between(0, 1).all()
    identities = pd.read_parquet(luma_small / "ground_truth" / "person_identities.parquet")
    assert set(identities["namespace"]) == {"ecid", "crm_id"}


def test_events_cover_channels_and_story(luma_small):
    events = pd.read_parquet(luma_small / "events")
    assert {"web", "mobile_app", "email", "push", "call_center", "store"} <= set(events["channel"].dropna())
    for event_type in ("purchase", "add_to_cart", "signup", "email_click", "offer_redeemed", "store_visit"):
        assert (events["event_type"] == event_type).sum() > 0, event_type
    purchases = events[events["event_type"] == "purchase"]
    assert purchases["revenue"].gt(0).all() and purchases["product_category"].notna().all()
    profiles = pd.read_csv(luma_small / "profiles.csv")
    assert set(profiles["consent_marketing"].dropna()) == {"y", "n"}


def test_generate_cli(tmp_path, runner):
    result = invoke(
        runner,
        "generate",
        "--profiles",
        "200",
        "--days",
        "40",
        "--out",
        str(tmp_path / "g"),
        "--no-ground-truth",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "events").is_dir() and not (tmp_path / "g" / "ground_truth").exists()
