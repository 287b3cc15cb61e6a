"""Identity stitching: anonymous and known histories merge; guardrails stop collapses."""

from __future__ import annotations

import pandas as pd

from propensity.core.config import IdentityConfig, ProjectConfig
from propensity.pipeline import ingest_jobs
from tests.conftest import write_events


def _ingest(tmp_path, rows, config=None, profiles=None, name="out"):
    path = write_events(tmp_path / f"{name}.parquet", rows)
    profile_path = write_events(tmp_path / f"{name}_profiles.csv", profiles) if profiles else None
    summary = ingest_jobs.ingest(path, tmp_path / name, config or ProjectConfig(), profiles=profile_path)
    events = pd.read_parquet(tmp_path / name / "events.parquet")
    id_map = pd.read_parquet(tmp_path / name / "identity_map.parquet")
    return summary, events, id_map


SARAH = [
    {"timestamp": "2025-03-01T10:00:00", "event_type": "page_view", "ecid": "sarah-phone"},
    {
        "timestamp": "2025-03-01T10:05:00",
        "event_type": "add_to_cart",
        "ecid": "sarah-phone",
        "product_category": "yoga",
    },
    {
        "timestamp": "2025-03-01T10:09:00",
        "event_type": "login",
        "ecid": "sarah-phone",
        "email": "sarah@example.com",
    },
    {"timestamp": "2025-03-05T18:00:00", "event_type": "email_open", "email": "SARAH@example.com "},
    {"timestamp": "2025-03-06T12:00:00", "event_type": "store_visit", "crm_id": "C1"},
    {"timestamp": "2025-03-01T11:00:00", "event_type": "page_view", "ecid": "someone-else"},
]


def test_anonymous_history_merges_with_known_on_sign_in(tmp_path):
    profiles = [
        {"crm_id": "C1", "email": "sarah@example.com", "consent_marketing": "y", "loyalty_tier": "gold"}
    ]
    summary, events, _id_map = _ingest(tmp_path, SARAH, profiles=profiles)
    sarah = events[
        events["ecid"].eq("sarah-phone") | events["crm_id"].eq("C1") | events["email_sha256"].notna()
    ]
    assert sarah["profile_id"].nunique() == 1
    assert len(sarah) == 5
    assert summary.profiles == 2 and summary.known_profiles == 1
    table = pd.read_parquet(tmp_path / "out" / "profiles.parquet").set_index("profile_id")
    row = table.loc[sarah["profile_id"].iloc[0]]
    assert bool(row["is_known"]) and row["identity_count"] == 3
    assert row["consent_marketing"] == "y" and row["loyalty_tier"] == "gold"
    assert pd.isna(row["consent_personalization"])  # missing means not given


def test_shared_device_does_not_merge_two_customers(tmp_path):
    rows = [
        {"timestamp": "2025-03-01T10:00:00", "event_type": "login", "ecid": "family-tablet", "crm_id": "C1"},
        {"timestamp": "2025-03-02T10:00:00", "event_type": "login", "ecid": "family-tablet", "crm_id": "C2"},
        {"timestamp": "2025-03-02T10:00:00", "event_type": "login", "ecid": "mum-phone", "crm_id": "C1"},
        {"timestamp": "2025-03-03T10:00:00", "event_type": "page_view", "ecid": "family-tablet"},
    ]
    summary, events, id_map = _ingest(tmp_path, rows)
    owner = id_map.set_index(id_map["namespace"] + ":" + id_map["value"])["profile_id"]
    assert owner["crm_id:C1"] != owner["crm_id:C2"]
    assert owner["ecid:mum-phone"] == owner["crm_id:C1"]
    assert owner["ecid:family-tablet"] not in (owner["crm_id:C1"], owner["crm_id:C2"])
    # Authenticated events still go to the person who signed in.
    logins = events[events["event_type"] == "login"].set_index("crm_id")["profile_id"]
    assert set(logins.loc["C1"]) == {owner["crm_id:C1"]} and logins.loc["C2"] == owner["crm_id:C2"]
    assert [c["reason"] for c in summary.identity_collapses] == ["unique_namespace_conflict"]


def test_oversized_component_keeps_known_ids_and_separates_devices(tmp_path):
    rows = [
        {
            "timestamp": "2025-03-01T10:00:00",
            "event_type": "login",
            "ecid": f"kiosk-{i}",
            "email": "test@luma.example",
        }
        for i in range(12)
    ]
    config = ProjectConfig(identity=IdentityConfig(max_identities_per_profile=5))
    summary, _events, id_map = _ingest(tmp_path, rows, config=config)
    assert id_map["profile_id"].nunique() == 13
    collapse = summary.identity_collapses[0]
    assert collapse["reason"] == "too_many_identities" and collapse["separated_identities"] == 12
    # Under the limit, the same shape merges into one profile.
    summary, _, id_map = _ingest(tmp_path, rows[:4], config=config, name="small")
    assert id_map["profile_id"].nunique() == 1 and summary.identity_collapses == []


def test_profile_ids_are_deterministic_and_independent_of_row_order(tmp_path):
    _, _, first = _ingest(tmp_path, SARAH, name="a")
    _, _, again = _ingest(tmp_path, SARAH, name="b")
    _, _, shuffled = _ingest(tmp_path, list(reversed(SARAH)), name="c")
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, shuffled)


def test_generated_data_stitches_sign_ins(luma_small, config):
    summary = ingest_jobs.validate(luma_small, config)
    assert summary.bad_rows == 0
    assert summary.duplicates_dropped > 0
    # Test accounts on ~120 kiosks each are caught by the size guardrail.
    reasons = [c["reason"] for c in summary.identity_collapses]
    assert reasons.count("too_many_identities") == 2
    loaded = ingest_jobs.load_events(luma_small, config)
    merged = loaded.con.execute("""
        SELECT count(*) FROM (
            SELECT profile_id FROM events GROUP BY profile_id
            HAVING bool_or(event_type = 'signup')
               AND min(timestamp) FILTER (WHERE email_sha256 IS NULL AND crm_id IS NULL)
                 < min(timestamp) FILTER (WHERE event_type = 'signup'))
    """).fetchone()[0]
    assert merged > 10


def test_identity_count_is_point_in_time(tmp_path):
    import datetime as dt

    from propensity.features import sql_compiler
    from propensity.features.registry import build_registry

    _ingest(tmp_path, SARAH, profiles=[{"crm_id": "C1", "email": "sarah@example.com"}])
    loaded = ingest_jobs.load_events(tmp_path / "out", ProjectConfig())
    fs = build_registry(ProjectConfig().features, [])
    sarah = loaded.con.execute("SELECT profile_id FROM events WHERE ecid = 'sarah-phone' LIMIT 1").fetchone()[
        0
    ]
    counts = {}
    for day in ("2025-03-01", "2025-03-02", "2025-03-06", "2025-03-07"):
        frame = sql_compiler.build_snapshot(loaded.con, fs, dt.date.fromisoformat(day)).set_index(
            "profile_id"
        )
        counts[day] = frame["identity_count"].get(sarah)
    # Nothing before 03-01; the phone and email on 03-01; the CRM id (linked through the
    # profile file) counts from its first event, the store visit on 03-06.
    assert counts == {"2025-03-01": None, "2025-03-02": 2, "2025-03-06": 2, "2025-03-07": 3}
