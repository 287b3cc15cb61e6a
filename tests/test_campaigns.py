"""Simulated campaigns: random arms, known individual effects, events, and a world without
campaigns left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from propensity.core.errors import UserError
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.features.synthetic.campaigns import RESPONSE_TYPES, in_memory_campaign
from propensity.features.synthetic.world import LUMA_YOGA, CampaignSpec

# sha256 of every file written for GeneratorSettings(profiles=600, days=90, seed=3) by the
# generator without campaigns, pinned when campaigns and class registrations met (their events
# decoded, less the class registrations, equal main at ef905fd row for row): a campaign setting
# that is off must not move a byte.
_BEFORE = {
    ".propensity-output.json": "7f85f074ab83a08ad802e21fc80f97c8952f8d7a55617ebb02157070ae996a61",
    "events/events-2025-01.parquet": "a400253c5763c846734eda003f8862e486c585f3774c1a8ce0fd05eb020044b0",
    "events/events-2025-02.parquet": "8866e2b7a9bdaf507e60ecf42558c772694ceb9cc6764eb54fddb172846b249c",
    "events/events-2025-03.parquet": "cc4d0a3cf65a9e46a1d2db8a11a1081007c8b8c11525c01abebd028258b081b6",
    "ground_truth/calendar.parquet": "4fc70da1cf0a2c6cdfc0e898f19ed8e66a06e6f96a628e3ab3d9b50756d8a7ee",
    "ground_truth/class_registrations.json": "f3af01091c3bce4abdb10f41ebd7e13dbbd4b9cb84a73d708e4c352c342bd675",  # noqa: E501
    "ground_truth/daily_purchase_probability.parquet": "9ad24cf6726b82a9d53e5daae1d57c7eb0da099a661186a9baa741a7857e2760",  # noqa: E501
    "ground_truth/person_identities.parquet": "0544eb91f65587121de1ef814c4511cb7414fe38a38984ad95fc16c7e99054a1",  # noqa: E501
    "ground_truth/person_traits.parquet": "d999f735157d863197303fbe8e87dd8fd67504d309dedb700aa4def9c7d338e9",
    "ground_truth/purchases.parquet": "2cd787af596f3b89ecb3065ba4746b90c3b2ec5c157ffe38b0d61f5eaeb1a457",
    "ground_truth/simulation.json": "35198b698eadc4f9b330df24d824de444ef1e7fe32e5a63e84de3f167091f78b",
    "profiles.csv": "4f240e02a3a84d6735a9722d4a18c450dc05e713f62cef96d9f9bc9037b8f703",
}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_world_without_campaigns_is_byte_identical(tmp_path):
    generate(GeneratorSettings(profiles=600, days=90, seed=3), tmp_path / "w")
    assert _digests(tmp_path / "w") == _BEFORE


def test_campaign_leaves_the_world_and_adds_its_events(tmp_path):
    plain, with_campaign = tmp_path / "plain", tmp_path / "campaign"
    generate(GeneratorSettings(profiles=1500, days=120, seed=5), plain)
    generate(GeneratorSettings(profiles=1500, days=120, seed=5, campaigns=(LUMA_YOGA,)), with_campaign)
    for name in ("person_traits.parquet", "purchases.parquet", "daily_purchase_probability.parquet"):
        assert (plain / "ground_truth" / name).read_bytes() == (
            with_campaign / "ground_truth" / name
        ).read_bytes()
    # (The writer's own noise -- resent duplicates, shared devices, loyalty tiers -- continues one
    # stream over more events, so profiles.csv and events may differ beyond the campaign's rows.)
    people = pd.read_parquet(with_campaign / "ground_truth" / "campaign_people.parquet")
    summary = json.loads((with_campaign / "ground_truth" / "campaigns.json").read_text())[0]
    events = pd.read_parquet(with_campaign / "events").drop_duplicates("event_id")
    received = events[events["event_type"] == "campaign_received"]
    outcome = events[(events["event_type"] == "purchase") & (events["campaign"] == "luma_yoga")]
    targeted = people[people["arm"] == "targeted"]
    # One received event per targeted person, none for the holdout; one purchase per conversion.
    assert sorted(received["crm_id"]) == sorted(targeted["crm_id"])
    # Treated conversions carry the campaign; the holdout's are untagged yoga purchases.
    treated_buyers = people[people["converted"] & (people["arm"] == "targeted")]
    assert sorted(outcome["crm_id"]) == sorted(treated_buyers["crm_id"])
    assert outcome["revenue"].sum() == pytest.approx(treated_buyers["revenue"].sum())
    yoga = events[(events["event_type"] == "purchase") & (events["product_category"] == "yoga")]
    held_buyers = people[people["converted"] & (people["arm"] == "holdout")]
    assert set(held_buyers["crm_id"]) <= set(yoga["crm_id"]) and len(held_buyers) > 0
    assert (outcome["product_category"] == "yoga").all()
    sent = pd.Timestamp(summary["sent"])
    assert (received["timestamp"].dt.normalize() == sent).all()
    assert (
        outcome["timestamp"].between(sent, pd.Timestamp(summary["horizon_end"]) + pd.Timedelta(days=1)).all()
    )
    assert summary["members"]["holdout"] == int((people["arm"] == "holdout").sum())
    assert summary["true"]["absolute_lift"] == pytest.approx(people["true_effect"].mean())
    # Random assignment: the holdout share is the spec's within a two-sided 99.9 % binomial bound.
    low, high = stats.binom.interval(0.999, len(people), LUMA_YOGA.holdout)
    assert low <= summary["members"]["holdout"] <= high


def test_four_response_types_behave_as_named():
    truth = in_memory_campaign(40_000, seed=1)
    table = truth.table().to_pandas()
    by_type = table.groupby("response_type")
    effect = by_type["true_effect"].mean()
    assert set(table["response_type"]) == set(RESPONSE_TYPES)
    assert effect["persuadable"] > 0.2
    assert effect["sleeping_dog"] < -0.1
    assert effect["sure_thing"] == 0 and effect["lost_cause"] == 0
    assert by_type["p_control"].mean()["sure_thing"] > 0.3
    assert by_type["p_treated"].mean()["lost_cause"] < 0.01
    # Each type is a real share of the people, and the effect differs within types too.
    assert (table["response_type"].value_counts(normalize=True) > 0.05).all()
    assert table.loc[table["response_type"] == "persuadable", "true_effect"].std() > 0.05
    # The pre-period predicts the outcome (what a regression adjustment uses).
    assert np.corrcoef(truth.pre_revenue, truth.revenue)[0, 1] > 0.2


def test_in_memory_campaign_is_seeded():
    a, b, c = in_memory_campaign(2000, 7), in_memory_campaign(2000, 7), in_memory_campaign(2000, 8)
    assert a.table().equals(b.table())
    assert not a.table().equals(c.table())


@pytest.mark.parametrize(
    "spec",
    [CampaignSpec(holdout=0.0), CampaignSpec(category="golf"), CampaignSpec(send_day=80, horizon_days=30)],
)
def test_impossible_campaigns_are_refused(spec):
    with pytest.raises(UserError, match="campaign 'luma_yoga'"):
        GeneratorSettings(profiles=100, days=100, campaigns=(spec,))
