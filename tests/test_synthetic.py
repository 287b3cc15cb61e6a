"""The synthetic generator: deterministic, realistic enough to tell the Luma story, `easy` unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from propensity.core.errors import UserError
from propensity.features.synthetic import GeneratorSettings, generate, simulate
from propensity.features.synthetic.world import CATEGORIES, OFFLINE, YOGA
from tests.conftest import invoke

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the simulated
# worlds) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("synthetic")


def _read(directory):
    return pd.read_parquet(directory / "events").sort_values(["event_id", "timestamp"]).reset_index(drop=True)


def _fingerprint(events: pd.DataFrame) -> str:
    """A digest of every event's values that does not depend on file or library versions."""
    events = events.sort_values(["event_id", "timestamp"]).reset_index(drop=True)
    digest = hashlib.sha256()
    digest.update(events["timestamp"].astype("int64").to_numpy().tobytes())
    digest.update(events["revenue"].astype("float64").fillna(-1.0).to_numpy().tobytes())
    for column in ("event_id", "event_type", "ecid", "email", "crm_id", "phone", "channel"):
        digest.update("|".join(events[column].astype(object).fillna("").astype(str)).encode())
    for column in ("product_category", "sku", "campaign"):
        digest.update("|".join(events[column].astype(object).fillna("").astype(str)).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("scenario", ["omnichannel", "purchase_only"])
def test_same_seed_same_data_other_seed_other_data(tmp_path, scenario):
    settings = GeneratorSettings(profiles=300, days=60, seed=3, scenario=scenario)
    generate(settings, tmp_path / "a")
    generate(settings, tmp_path / "b")
    generate(GeneratorSettings(profiles=300, days=60, seed=4, scenario=scenario), tmp_path / "c")
    pd.testing.assert_frame_equal(_read(tmp_path / "a"), _read(tmp_path / "b"))
    for name in ("profiles.csv", "ground_truth/simulation.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a" / "ground_truth" / "purchases.parquet"),
        pd.read_parquet(tmp_path / "b" / "ground_truth" / "purchases.parquet"),
    )
    assert _fingerprint(_read(tmp_path / "a")) != _fingerprint(_read(tmp_path / "c"))


@pytest.mark.parametrize(
    ("profiles", "days", "seed", "events", "purchases", "known", "revenue", "fingerprint"),
    [
        (300, 60, 3, 1586, 52, 189, 5402.42, "e3323c1b5e953a12"),
        (1500, 240, 7, 22336, 927, 921, 92881.07, "2f989e1028a7a1ea"),
    ],
)
def test_easy_reproduces_the_original_generator(
    tmp_path, profiles, days, seed, events, purchases, known, revenue, fingerprint
):
    # Figures and digests of the generator before the realistic world was added (same seeds).
    summary = generate(
        GeneratorSettings(profiles=profiles, days=days, seed=seed, difficulty="easy"), tmp_path / "e"
    )
    assert (summary.events, summary.purchases, summary.known_people) == (events, purchases, known)
    assert summary.unrecorded_purchases == 0 and summary.bots == 0
    written = _read(tmp_path / "e")
    assert round(written["revenue"].sum(), 2) == revenue
    assert _fingerprint(written) == fingerprint


def test_ground_truth_covers_every_person_and_day(luma_small):
    truth = pd.read_parquet(luma_small / "ground_truth" / "daily_purchase_probability.parquet")
    assert len(truth) == 1500 * 240
    assert truth["probability"].between(0, 1).all()
    identities = pd.read_parquet(luma_small / "ground_truth" / "person_identities.parquet")
    assert set(identities["namespace"]) == {"ecid", "crm_id"}
    traits = pd.read_parquet(luma_small / "ground_truth" / "person_traits.parquet")
    assert len(traits) == 1500 and traits["cycle_days"].gt(0).all()
    calendar = pd.read_parquet(luma_small / "ground_truth" / "calendar.parquet")
    assert len(calendar) == 240 and calendar["promotion_depth"].gt(0).any()


def test_events_cover_channels_and_story(luma_small):
    events = pd.read_parquet(luma_small / "events")
    assert {"web", "mobile_app", "email", "push", "call_center", "store"} <= set(events["channel"].dropna())
    for event_type in ("purchase", "add_to_cart", "signup", "email_click", "offer_redeemed", "store_visit"):
        assert (events["event_type"] == event_type).sum() > 0, event_type
    purchases = events[events["event_type"] == "purchase"]
    assert purchases["revenue"].gt(0).all() and purchases["product_category"].notna().all()
    assert purchases["sku"].notna().all()
    profiles = pd.read_csv(luma_small / "profiles.csv")
    assert set(profiles["consent_marketing"].dropna()) == {"y", "n"}
    assert set(profiles["consent_personalization"].dropna()) == {"y", "n"}
    assert {"bronze", "silver", "gold"} <= set(profiles["loyalty_tier"])


@pytest.fixture(scope="module")
def worlds():
    """The same people in both worlds: a year of 4,000."""
    return {
        difficulty: simulate(GeneratorSettings(profiles=4000, days=365, seed=5, difficulty=difficulty))
        for difficulty in ("easy", "realistic")
    }


def _purchases(simulation) -> pd.DataFrame:
    return pd.DataFrame(simulation.purchases).sort_values(["person", "day"], kind="stable")


def test_realistic_purchase_cycles_differ_by_person_much_more(worlds):
    share = {}
    for difficulty, simulation in worlds.items():
        bought = _purchases(simulation)
        bought["log_gap"] = np.log(bought.groupby("person")["day"].diff())
        gaps = bought.dropna()
        gaps = gaps[gaps.groupby("person")["log_gap"].transform("size") >= 2]
        between = gaps.groupby("person")["log_gap"].mean().var()
        within = gaps.groupby("person")["log_gap"].var().mean()
        share[difficulty] = between / (between + within)
    # Replenishment every few weeks for some, yearly for others, fairly regular within a person.
    assert share["realistic"] > share["easy"] + 0.1


def test_realistic_weekends_holidays_and_promotions_sell_more(worlds):
    simulation = worlds["realistic"]
    bought = _purchases(simulation)
    daily = np.bincount(bought["day"], minlength=365)
    weekday = simulation.calendar.weekday
    assert daily[weekday >= 5].mean() > 1.15 * daily[weekday < 5].mean()
    dates = pd.date_range("2025-01-01", periods=365)
    holidays = (dates >= "2025-11-28") & (dates <= "2025-12-22")
    assert daily[holidays].mean() > 1.3 * daily[dates.month == 10].mean()
    promotion = simulation.calendar.promo_depth > 0
    sensitivity = simulation.traits.sensitivity
    lift = {}
    for name, group in (("high", sensitivity > np.quantile(sensitivity, 0.8)), ("low", sensitivity < 0.3)):
        per_day = np.bincount(bought["day"][group[bought["person"]]], minlength=365)
        lift[name] = per_day[promotion].mean() / per_day[~promotion].mean()
    assert lift["high"] > 2 * lift["low"]


def test_realistic_drift_bots_and_unrecorded_purchases(worlds, tmp_path):
    simulation = worlds["realistic"]
    bought = _purchases(simulation)
    first, last = bought[bought["day"] < 91], bought[bought["day"] >= 274]
    # Yoga's appeal grows through the year.
    assert (last["category"] == YOGA).mean() > (first["category"] == YOGA).mean() + 0.05
    bots = simulation.traits.is_bot
    assert bots.sum() > 5 and not bots[bought["person"]].any()
    events = simulation.events
    per_person = np.bincount(events["person"][events["person"] < len(bots)], minlength=len(bots))
    assert np.median(per_person[bots]) > 10 * np.median(per_person[~bots & (per_person > 0)])
    assert not (events["with_email"] | events["with_crm"])[
        bots[np.minimum(events["person"], len(bots) - 1)]
    ].any()
    assert (bought["channel"] == OFFLINE).sum() > 0


def test_unrecorded_purchases_are_in_the_ground_truth_only(tmp_path):
    summary = generate(GeneratorSettings(profiles=800, days=120, seed=9), tmp_path / "r")
    truth = pd.read_parquet(tmp_path / "r" / "ground_truth" / "purchases.parquet")
    assert summary.unrecorded_purchases == (~truth["recorded"]).sum() > 0
    assert summary.purchases == truth["recorded"].sum()
    assert set(truth.loc[~truth["recorded"], "channel"]) == {"offline"}
    events = pd.read_parquet(tmp_path / "r" / "events").drop_duplicates("event_id")
    assert (events["event_type"] == "purchase").sum() == truth["recorded"].sum()


def test_purchase_only_is_a_transaction_log_with_repeat_buyers(tmp_path):
    summary = generate(
        GeneratorSettings(profiles=1000, days=365, seed=2, scenario="purchase_only"), tmp_path / "p"
    )
    events = pd.read_parquet(tmp_path / "p" / "events")
    assert set(events["event_type"]) == {"purchase"} and summary.purchases > 0
    assert events["crm_id"].notna().all()
    assert events[["ecid", "email", "phone", "campaign"]].isna().all().all()
    assert set(events["product_category"]) <= set(CATEGORIES) and events["revenue"].gt(0).all()
    per_customer = events.drop_duplicates("event_id").groupby("crm_id", observed=True).size()
    assert per_customer.mean() >= 3 and per_customer.max() >= 10
    profiles = pd.read_csv(tmp_path / "p" / "profiles.csv")
    assert set(events["crm_id"]) <= set(profiles["crm_id"])


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
    log = invoke(
        runner,
        "generate",
        "--profiles",
        "200",
        "--days",
        "40",
        "--out",
        str(tmp_path / "p"),
        "--difficulty",
        "easy",
        "--scenario",
        "purchase_only",
    )
    assert log.exit_code == 0, log.output
    assert set(pd.read_parquet(tmp_path / "p" / "events")["event_type"]) == {"purchase"}
    bad = invoke(runner, "generate", "--out", str(tmp_path / "x"), "--difficulty", "hard")
    assert bad.exit_code == 2 and "--difficulty must be 'easy' or 'realistic'" in " ".join(bad.output.split())


def test_settings_refuse_unknown_knobs():
    with pytest.raises(UserError, match="--scenario"):
        GeneratorSettings(scenario="web_only")  # type: ignore[arg-type]
