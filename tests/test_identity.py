"""Identity stitching: anonymous and known histories merge; guardrails stop collapses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from propensity.core.config import IdentityConfig, ProjectConfig
from propensity.features.connection import relation_columns
from propensity.pipeline.jobs import events as event_jobs
from propensity.pipeline.jobs import ingest as ingest_jobs
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
    loaded = event_jobs.load_events(luma_small, config)
    merged = loaded.con.execute("""
        SELECT count(*) FROM (
            SELECT profile_id FROM events GROUP BY profile_id
            HAVING bool_or(event_type = 'signup')
               AND min(timestamp) FILTER (WHERE email_sha256 IS NULL AND crm_id IS NULL)
                 < min(timestamp) FILTER (WHERE event_type = 'signup'))
    """).fetchone()[0]
    assert merged > 10


def test_identity_count_is_point_in_time(tmp_path):
    from propensity.features.build import build_registry, sql_compiler

    _ingest(tmp_path, SARAH, profiles=[{"crm_id": "C1", "email": "sarah@example.com"}])
    loaded = event_jobs.load_events(tmp_path / "out", ProjectConfig())
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


# --- the graph at an as-of date: links observed later never reach back ---

LATE_AS_OF = dt.date(2025, 3, 10)
# The buyer is known by email before as_of and browses on a phone; only the checkout after
# as_of, carrying the email and the device id, links the two.
LATE_LINK = [
    {"timestamp": "2025-02-01T12:00:00", "event_type": "page_view", "ecid": "someone-else"},
    {
        "timestamp": "2025-03-01T09:00:00",
        "event_type": "email_open",
        "email_sha256": "buyer",
        "channel": "email",
    },
    {"timestamp": "2025-03-03T20:00:00", "event_type": "page_view", "ecid": "phone"},
    {
        "timestamp": "2025-03-04T20:00:00",
        "event_type": "product_view",
        "ecid": "phone",
        "product_category": "yoga",
    },
    {
        "timestamp": "2025-03-05T20:00:00",
        "event_type": "add_to_cart",
        "ecid": "phone",
        "product_category": "yoga",
    },
    {
        "timestamp": "2025-03-12T20:05:00",
        "event_type": "purchase",
        "ecid": "phone",
        "email_sha256": "buyer",
        "revenue": 50.0,
    },
    # The data runs past the 30-day horizon, so labels can be known.
    {"timestamp": "2025-04-20T12:00:00", "event_type": "page_view", "ecid": "someone-else"},
]


def _owners(loaded, as_of: dt.date) -> dict[str, str]:
    """namespace:value -> profile_id at as_of, for the identities seen before it."""
    rows = loaded.con.execute(
        f"SELECT namespace, value, profile_id FROM {loaded.sources(as_of).identity_map}"
    )
    return {f"{ns}:{value}": profile for ns, value, profile in rows.fetchall()}


def test_a_link_made_after_as_of_leaves_the_snapshot_at_as_of_alone(tmp_path):
    from propensity.core.config import ModelConfig
    from propensity.pipeline.jobs import features as feature_jobs

    _ingest(tmp_path, LATE_LINK)
    config = ProjectConfig()
    # Single snapshot (the features job): the phone's browsing stays the phone's.
    table = feature_jobs.build_features(tmp_path / "out", tmp_path / "f.parquet", config, LATE_AS_OF)
    frame = pd.read_parquet(table.out)
    assert len(frame) == 3
    assert sorted(frame["identity_count"]) == [1, 1, 1]
    assert sorted(frame["event_count_365d"]) == [1, 1, 3]
    buyer = frame[frame["is_known"] == 1].iloc[0]
    assert buyer["event_count_30d"] == 1 and buyer["add_to_cart_count_30d"] == 0

    # The population ("known") holds the email's profile only, labelled by the purchase made
    # through the identity it had at as_of.
    models = Path(tmp_path / "known.yaml")
    models.write_text(
        "name: known\npopulation: 'is_known = 1'\n"
        "outcome: {event_type: purchase, horizon_days: 30}\n"
        "training: {snapshots: {count: 3, spacing_days: 7}}\n"
    )
    labelled = pd.read_parquet(
        feature_jobs.build_features(
            tmp_path / "out", tmp_path / "l.parquet", config, LATE_AS_OF, model=str(models)
        ).out
    )
    loaded = event_jobs.load_events(tmp_path / "out", config)
    owners = _owners(loaded, LATE_AS_OF)
    assert owners["email_sha256:buyer"] != owners["ecid:phone"]
    assert labelled["profile_id"].tolist() == [owners["email_sha256:buyer"]]
    assert labelled["identity_count"].tolist() == [1] and labelled["label"].tolist() == [1]

    # Stacked snapshots (training) see the same profiles and labels, to the last digit.
    model = ModelConfig.model_validate(
        {
            "name": "known",
            "population": "is_known = 1",
            "training": {"snapshots": {"count": 3, "spacing_days": 7}},
        }
    )
    fs = event_jobs.feature_set(loaded, config, LATE_AS_OF)
    rows = loaded.training_rows(fs, model, LATE_AS_OF + dt.timedelta(days=30))
    stacked, dates = rows.frame, rows.dates
    assert dates[-1] == LATE_AS_OF
    at_as_of = stacked[stacked["as_of"] == pd.Timestamp(LATE_AS_OF)].reset_index(drop=True)
    labelled["as_of"] = pd.to_datetime(labelled["as_of"])
    plain = lambda f: f.astype(object).where(f.notna(), None)  # noqa: E731  (None and NaN alike)
    pd.testing.assert_frame_equal(plain(at_as_of), plain(labelled[at_as_of.columns]))


def test_outcomes_count_for_the_first_identity_known_at_as_of(tmp_path):
    from propensity.core.config import OutcomeConfig
    from propensity.features.build import build_registry
    from propensity.features.build.model_frames import labelled_sql, outcome_filter
    from propensity.features.build.sql_compiler import snapshot_sql

    rows = [
        *LATE_LINK[:5],
        {"timestamp": "2025-03-01T12:00:00", "event_type": "page_view", "ecid": "tablet"},
        # A new email on a known device: the device's profile bought.
        {
            "timestamp": "2025-03-11T10:00:00",
            "event_type": "purchase",
            "ecid": "tablet",
            "email_sha256": "new-customer",
            "revenue": 20.0,
        },
        # Nothing of this buyer existed at as_of: it counts for nobody then.
        {
            "timestamp": "2025-03-11T11:00:00",
            "event_type": "purchase",
            "ecid": "stranger",
            "email_sha256": "stranger",
            "revenue": 20.0,
        },
        # Email and phone known, the email first in precedence: the email's profile.
        *LATE_LINK[5:],
    ]
    _ingest(tmp_path, rows)
    loaded = event_jobs.load_events(tmp_path / "out", ProjectConfig())
    graph, fs = loaded.graph, build_registry(ProjectConfig().features, [])
    sources = loaded.sources(LATE_AS_OF)
    outcome = OutcomeConfig(horizon_days=30)
    sql = labelled_sql(
        snapshot_sql(
            fs,
            LATE_AS_OF,
            relation_columns(loaded.con, sources.profiles),
            events=sources.events,
            profiles=sources.profiles,
        ),
        outcome,
        outcomes=graph.outcomes_sql(outcome_filter(outcome), 30, [LATE_AS_OF], "events"),
    )
    labels = loaded.con.execute(sql).df().set_index("profile_id")["label"]
    owners = _owners(loaded, LATE_AS_OF)
    by_identity = {name: labels[owners[name]] for name in ("email_sha256:buyer", "ecid:phone", "ecid:tablet")}
    assert by_identity == {"email_sha256:buyer": 1, "ecid:phone": 0, "ecid:tablet": 1}
    assert labels.sum() == 2 and "ecid:stranger" not in owners


def test_guardrails_hold_in_the_graph_at_each_date(tmp_path):
    rows = [
        {"timestamp": "2025-03-01T10:00:00", "event_type": "login", "ecid": "family-tablet", "crm_id": "C1"},
        {"timestamp": "2025-03-02T10:00:00", "event_type": "login", "ecid": "family-tablet", "crm_id": "C2"},
        {"timestamp": "2025-03-02T11:00:00", "event_type": "login", "ecid": "mum-phone", "crm_id": "C1"},
        # After as_of: a third account on the tablet, and the kiosk email on a sixth device.
        {"timestamp": "2025-03-12T10:00:00", "event_type": "login", "ecid": "family-tablet", "crm_id": "C3"},
        *(
            {
                "timestamp": f"2025-03-0{i + 1}T10:00:00",
                "event_type": "login",
                "ecid": f"kiosk-{i}",
                "email": "t@x",
            }
            for i in range(4)
        ),
        {"timestamp": "2025-03-12T10:00:00", "event_type": "login", "ecid": "kiosk-9", "email": "t@x"},
    ]
    config = ProjectConfig(identity=IdentityConfig(max_identities_per_profile=5))
    summary, _events, id_map = _ingest(tmp_path, rows, config=config)
    loaded = event_jobs.load_events(tmp_path / "out", config)
    owner = _owners(loaded, LATE_AS_OF)
    # Two accounts on one tablet before as_of: split then, as in the final graph.
    assert owner["crm_id:C1"] != owner["crm_id:C2"] and owner["ecid:mum-phone"] == owner["crm_id:C1"]
    assert owner["ecid:family-tablet"] not in (owner["crm_id:C1"], owner["crm_id:C2"])
    assert "crm_id:C3" not in owner
    # Four kiosks and the email are within the limit at as_of: one profile then; the sixth
    # identity, later, trips the limit and the final graph separates the kiosks.
    assert len({owner[f"ecid:kiosk-{i}"] for i in range(4)}) == 1
    final = id_map.set_index(id_map["namespace"] + ":" + id_map["value"])["profile_id"]
    assert len({final[f"ecid:kiosk-{i}"] for i in range(4)}) == 4
    assert summary.unsettled_profiles >= 2


def test_a_profile_row_links_its_identities_from_its_signup_date(tmp_path):
    rows = [
        {"timestamp": "2025-03-01T10:00:00", "event_type": "store_visit", "crm_id": "C7"},
        {"timestamp": "2025-03-02T10:00:00", "event_type": "email_open", "email": "late@example.com"},
        {"timestamp": "2025-03-20T10:00:00", "event_type": "page_view", "ecid": "d"},
    ]
    profiles = [
        {"crm_id": "C7", "email": "late@example.com", "signup_date": "2025-03-15", "loyalty_tier": "gold"}
    ]
    _ingest(tmp_path, rows, profiles=profiles)
    loaded = event_jobs.load_events(tmp_path / "out", ProjectConfig())
    before, after = _owners(loaded, LATE_AS_OF), _owners(loaded, dt.date(2025, 3, 16))
    email = next(k for k in before if k.startswith("email_sha256:"))
    assert before["crm_id:C7"] != before[email] and after["crm_id:C7"] == after[email]
    # At as_of the attributes sit with the profile of the row's first identity (crm_id).
    profiles = loaded.sources(LATE_AS_OF).profiles
    attributes = loaded.con.execute(
        f"SELECT profile_id, loyalty_tier FROM {profiles} WHERE loyalty_tier IS NOT NULL"
    ).fetchall()
    assert attributes == [(before["crm_id:C7"], "gold")]


def test_ingest_output_is_identical_when_run_again(tmp_path):
    _ingest(tmp_path, LATE_LINK, name="a")
    _ingest(tmp_path, list(reversed(LATE_LINK)), name="b")
    for name in ("events", "identity_map", "identity_links", "identity_unsettled", "profiles"):
        first = pd.read_parquet(tmp_path / "a" / f"{name}.parquet")
        again = pd.read_parquet(tmp_path / "b" / f"{name}.parquet")
        if name == "events":  # rows in the same order; source bookkeeping aside
            first, again = (f.drop(columns=["event_id"]).reset_index(drop=True) for f in (first, again))
        pd.testing.assert_frame_equal(first, again, obj=name)
    assert len(pd.read_parquet(tmp_path / "a" / "identity_unsettled.parquet")) == 1


def test_an_older_ingest_directory_asks_to_ingest_again(tmp_path):
    import json

    import pytest

    from propensity.core.errors import UserError

    _ingest(tmp_path, LATE_LINK)
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 3}))
    with pytest.raises(UserError, match="run `propensity ingest` again"):
        event_jobs.load_events(tmp_path / "out", ProjectConfig())


def test_unsettled_intervals_are_the_times_a_component_was_in_pieces():
    import numpy as np

    from propensity.features.identity.graph import ALWAYS, group_identities, unsettled_intervals

    # 0 and 1 are seen apart (t=1, t=2) and linked at t=3; 2 arrives already linked (t=5);
    # 3 and 4 are one profile row from the start, 5 joins them at t=7 on its first sighting.
    namespaces = np.array(["ecid", "email_sha256", "ecid", "crm_id", "email_sha256", "ecid"], dtype=object)
    node_time = np.array([1, 2, 5, ALWAYS, ALWAYS, 7])
    src, dst, link_time = np.array([0, 1, 3, 3]), np.array([1, 2, 4, 5]), np.array([3, 5, ALWAYS, 7])
    grouping = group_identities(namespaces, src, dst, IdentityConfig())
    found = unsettled_intervals(grouping, node_time, src, dst, link_time)
    assert list(zip(found.component, found.after, found.until, strict=True)) == [
        (grouping.component[0], 2, 3)
    ]
    # Two accounts in one component: rebuilt at every date until its last identity arrives.
    namespaces[2] = "crm_id"
    namespaces[0] = "crm_id"
    grouping = group_identities(namespaces, src, dst, IdentityConfig())
    found = unsettled_intervals(grouping, node_time, src, dst, link_time)
    assert list(zip(found.component, found.after, found.until, strict=True)) == [
        (grouping.component[0], ALWAYS, 5)
    ]
