"""Point-in-time features: known answers for every family, and no leakage (property tests)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from propensity.core.config import FeatureConfig
from propensity.features.build import build_registry, sql_compiler, stacked_build
from propensity.features.connection import relation_columns
from propensity.features.sql import SPARK

AS_OF = dt.date(2025, 6, 1)
CONFIG = FeatureConfig(categories=["yoga", "running"])
FS = build_registry(CONFIG)


def ts(days_before: float, hour: int = 12) -> pd.Timestamp:
    return pd.Timestamp(AS_OF) - pd.Timedelta(days=days_before) + pd.Timedelta(hours=hour)


def event(days_before: float, event_type: str, profile: str = "p1", **extra) -> dict:
    row = {
        "profile_id": profile,
        "timestamp": ts(days_before, extra.pop("hour", 12)),
        "event_type": event_type,
        "channel": "web",
        "product_category": None,
        "revenue": None,
        "crm_id": None,
        "email_sha256": None,
        "phone_sha256": None,
        "new_identities": 0,
        "order_lines": None,
        "order_revenue": None,
    }
    row.update(extra)
    return row


def connection(rows: list[dict], profiles: pd.DataFrame | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    frame = pd.DataFrame(rows)
    frame["revenue"] = frame["revenue"].astype(float)
    frame["order_revenue"] = frame["order_revenue"].astype(float)
    frame["order_lines"] = frame["order_lines"].astype("Int32")
    for column in ("product_category", "crm_id", "email_sha256", "phone_sha256", "channel"):
        frame[column] = frame[column].astype(object)
    con.register("_events", frame)
    con.execute(
        "CREATE TABLE events AS SELECT * REPLACE (CAST(timestamp AS TIMESTAMP) AS timestamp) FROM _events"
    )
    if profiles is not None:
        con.register("_profiles", profiles)
        con.execute("CREATE TABLE profiles AS SELECT * FROM _profiles")
    return con


# Three ways to one snapshot: each aggregate over its window, window buckets, and the
# compiled pass behind stacked training snapshots. Every known answer holds for all three.
PATHS = ["windows", "buckets", "stacked"]


def snapshot(
    rows: list[dict], as_of: dt.date = AS_OF, profiles: pd.DataFrame | None = None, path: str = "windows"
) -> pd.DataFrame:
    con = connection(rows, profiles)
    if path == "stacked":
        stacked_build.build_snapshots(con, FS, [as_of])
        frame = con.execute("SELECT * FROM snapshot_features ORDER BY profile_id").df()
    else:
        frame = sql_compiler.build_snapshot(con, FS, as_of, plan=path)
    return frame.set_index("profile_id")


# Sarah: a yoga customer, lapsed for a while, who came back to browse this week.
SARAH = [
    event(200, "purchase", revenue=80.0, product_category="yoga", channel="store", crm_id="C1"),
    event(100, "purchase", revenue=40.0, product_category="running", email_sha256="h"),
    event(60, "email_send", channel="email", email_sha256="h"),
    event(60, "email_open", channel="email", email_sha256="h"),
    event(59, "email_send", channel="email", email_sha256="h"),
    event(20, "add_to_cart", product_category="yoga"),
    event(6, "product_view", product_category="yoga"),
    event(6, "product_view", product_category="yoga", hour=13),
    event(2, "add_to_cart", product_category="yoga", channel="mobile_app"),
    event(1, "page_view", channel="mobile_app", hour=21),  # the evening before as_of
    event(0, "purchase", revenue=99.0, hour=0),  # exactly at as_of: never a feature
]


@pytest.mark.parametrize("path", PATHS)
def test_known_answers_for_every_family(path):
    row = snapshot(SARAH, path=path).loc["p1"]
    # activity
    assert row["event_count_7d"] == 4 and row["event_count_30d"] == 5 and row["event_count_365d"] == 10
    assert row["active_days_7d"] == 3 and row["active_days_365d"] == 8
    assert row["product_view_count_7d"] == 2 and row["add_to_cart_count_30d"] == 2
    assert row["purchase_count_90d"] == 0 and row["purchase_count_365d"] == 2
    # recency (an event the evening before as_of is 1 day ago)
    assert row["days_since_last_event"] == 1 and row["days_since_first_event"] == 200
    assert row["days_since_last_purchase"] == 100 and row["days_since_last_add_to_cart"] == 2
    assert pd.isna(row["days_since_last_search"])
    # monetary
    assert row["revenue_sum_365d"] == 120 and row["average_order_value_365d"] == 60
    assert row["max_order_value_365d"] == 80 and row["revenue_sum_90d"] == 0
    assert pd.isna(row["average_order_value_90d"])
    # funnel: a cart 20 days ago never converted; the one 2 days ago is still open
    assert row["funnel_stage_7d"] == 2 and row["funnel_stage_365d"] == 4
    assert row["cart_abandoned_30d"] == 0  # the latest cart of the window is too recent to judge
    assert row["open_cart"] == 1
    assert row["view_to_cart_ratio_7d"] == pytest.approx(0.5)
    assert row["cart_to_purchase_ratio_365d"] == pytest.approx(1.0)
    # channel
    assert row["channel_share_mobile_app_30d"] == pytest.approx(2 / 5)
    assert row["channel_share_email_90d"] == pytest.approx(3 / 8)
    assert row["email_open_rate_90d"] == pytest.approx(0.5) and pd.isna(row["email_click_rate_7d"])
    # category
    assert row["category_view_count_30d_yoga"] == 2 and row["category_purchase_count_365d_yoga"] == 1
    assert row["days_since_last_purchase_yoga"] == 200 and row["days_since_last_purchase_running"] == 100
    # trend: 4 events in 7 days against 1 in the 30 before
    assert row["events_trend_7d_vs_prior_30d"] == pytest.approx((4 / 7 + 0.05) / (1 / 30 + 0.05))
    # profile
    assert row["is_known"] == 1
    assert row["identity_count"] == 0  # this fixture marks no first sightings


@pytest.mark.parametrize("path", PATHS)
def test_cart_abandonment_needs_its_follow_up_window_to_have_passed(path):
    rows = [event(10, "add_to_cart"), event(2, "page_view")]
    assert snapshot(rows, path=path).loc["p1", "cart_abandoned_30d"] == 1
    assert (
        snapshot([*rows, event(8, "purchase", revenue=10.0)], path=path).loc["p1", "cart_abandoned_30d"] == 0
    )
    assert snapshot([event(2, "add_to_cart")], path=path).loc["p1", "cart_abandoned_30d"] == 0


@pytest.mark.parametrize("path", PATHS)
def test_is_known_and_profile_attributes_are_point_in_time(path):
    rows = [event(50, "page_view"), event(5, "login", email_sha256="h")]
    profiles = pd.DataFrame(
        {
            "profile_id": ["p1"],
            "loyalty_tier": ["gold"],
            "signup_date": [pd.Timestamp("2025-05-27")],
            "consent_marketing": ["n"],
            "consent_personalization": ["y"],
        }
    )
    now = snapshot(rows, profiles=profiles, path=path).loc["p1"]
    assert now["is_known"] == 1 and now["loyalty_tier"] == "gold" and now["tenure_days"] == 5
    before = snapshot(rows, as_of=dt.date(2025, 5, 20), profiles=profiles, path=path).loc["p1"]
    assert before["is_known"] == 0 and pd.isna(before["loyalty_tier"]) and pd.isna(before["tenure_days"])
    # Consent is carried for segments but is never a model feature.
    assert now["consent_marketing"] == "n"
    assert "consent_marketing" not in FS.names() and "consent_personalization" not in FS.names()


def test_every_feature_has_a_readable_label_and_a_unique_name():
    names = [f.name for f in FS.features]
    assert len(names) == len(set(names))
    for feature in FS.features:
        assert feature.label and feature.label[0].isupper() and "_" not in feature.label, feature.name


def test_stacked_snapshots_equal_single_snapshots_and_the_sql_form(luma_small, config):
    from propensity.pipeline.jobs import events as event_jobs

    loaded = event_jobs.load_events(luma_small, config)
    con = loaded.con
    fs = build_registry(config.features, ["yoga", "running"])
    dates = [dt.date(2025, 5, 1), dt.date(2025, 6, 12), dt.date(2025, 8, 1)]
    rows = stacked_build.build_snapshots(con, fs, dates)
    stacked = con.execute("SELECT * FROM snapshot_features ORDER BY as_of, profile_id").df()
    assert rows == len(stacked)
    sql_compiler.build_rollup(con, fs)
    portable = con.execute(sql_compiler.snapshots_sql(fs, dates, relation_columns(con, "profiles"))).df()
    pd.testing.assert_frame_equal(stacked, portable, check_dtype=False)
    # Snapshots through the compiled pass one batch at a time, and a population kept: same rows.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacked_build, "BATCH_BYTES", 1)
        stacked_build.build_snapshots(con, fs, dates, table="batched", where='f."event_count_30d" > 0')
    batched = con.execute("SELECT * FROM batched ORDER BY as_of, profile_id").df()
    active = stacked[stacked["event_count_30d"] > 0].reset_index(drop=True)
    assert 0 < len(batched) < len(stacked)
    pd.testing.assert_frame_equal(batched, active)

    # Profiles as of each date: those whose identities were not one profile yet are built
    # apart, and the whole still equals the single snapshots over the graph at each date.
    reattributed = loaded.graph.reattributed(dates, "events")
    assert all(n > 10 for n in reattributed.changed_profiles.values())
    stacked_build.build_snapshots(con, fs, dates, table="as_of", reattributed=reattributed)
    as_of = con.execute("SELECT * FROM as_of ORDER BY as_of, profile_id").df()
    assert not as_of.equals(stacked)
    for date in dates:
        part = as_of[as_of["as_of"] == pd.Timestamp(date)].reset_index(drop=True)
        sources = loaded.sources(date)
        for plan in ("windows", "buckets"):
            single = sql_compiler.build_snapshot(
                con, fs, date, plan=plan, events=sources.events, profiles=sources.profiles
            )
            assert len(single) > 100
            # Exactly: training (stacked) and scoring (single) must see the same numbers.
            pd.testing.assert_frame_equal(single, part, check_dtype=False, check_exact=True, obj=plan)
    # The graphs of several dates are built in one pass: the same as one date at a time.
    graphs = "SELECT * FROM identity_as_of ORDER BY as_of, node_key"
    together = con.execute(graphs).df()
    loaded.graph.forget()
    for date in dates:
        loaded.graph.prepare([date])
    pd.testing.assert_frame_equal(con.execute(graphs).df(), together)


# --- property tests: nothing at or after as_of, nor older than a feature's reach, matters ---

EVENT_TYPES = [
    "page_view",
    "product_view",
    "add_to_cart",
    "checkout",
    "purchase",
    "email_send",
    "email_open",
    "email_click",
    "store_visit",
]

event_strategy = st.fixed_dictionaries(
    {
        "profile": st.sampled_from(["a", "b"]),
        "days_before": st.integers(min_value=-40, max_value=800),
        "hour": st.integers(min_value=0, max_value=23),
        "event_type": st.sampled_from(EVENT_TYPES),
        "channel": st.sampled_from(["web", "mobile_app", "email", "store"]),
        "category": st.sampled_from([None, "yoga", "running", "hiking"]),
        "revenue": st.floats(min_value=1, max_value=500).map(lambda x: round(x, 2)),
        "known": st.booleans(),
    }
)


def _rows(specs: list[dict]) -> list[dict]:
    return [
        event(
            s["days_before"],
            s["event_type"],
            profile=s["profile"],
            hour=s["hour"],
            channel=s["channel"],
            product_category=s["category"],
            revenue=s["revenue"] if s["event_type"] == "purchase" else None,
            crm_id="C" + s["profile"] if s["known"] else None,
        )
        for s in specs
    ]


def _features(rows: list[dict], path: str) -> pd.DataFrame:
    # Profiles with no history before as_of have no row; a later event must not create one.
    return snapshot(rows, path=path).drop(columns=["as_of"]).sort_index()


def _at(days: st.SearchStrategy[int]) -> st.SearchStrategy[dict]:
    """Events whose ``days_before`` is drawn from ``days``."""
    return st.builds(lambda s, d: {**s, "days_before": d}, event_strategy, days)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(_at(st.integers(1, 800)), min_size=1, max_size=25),
    future=st.lists(event_strategy, min_size=1, max_size=10),
)
def test_events_at_or_after_as_of_never_change_features(path, past, future):
    # Every example has history before as_of and events at or after it: none returns early.
    later = [{**s, "days_before": min(s["days_before"], 0) - (s["days_before"] % 30)} for s in future]
    base = _features(_rows(past), path)
    with_future = _features(_rows(past + later), path)
    pd.testing.assert_frame_equal(base, with_future)


@st.composite
def _recent_and_old(draw) -> tuple[int, list[dict], list[dict]]:
    """A reach, events within it (days 1..reach before as_of) and events beyond it: every
    example exercises the window (none is skipped for lack of recent or old events)."""
    reach = draw(st.sampled_from([7, 30, 90, 365]))
    recent = draw(st.lists(_at(st.integers(1, reach)), min_size=1, max_size=15))
    old = draw(st.lists(_at(st.integers(reach + 1, reach + 400)), min_size=1, max_size=15))
    return reach, recent, old


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_recent_and_old(), seed=st.integers(0, 2**16))
def test_events_older_than_a_features_reach_never_change_it(path, events, seed):
    reach, recent, older = events
    past = recent + older
    rng = np.random.default_rng(seed)
    # Change old events: drop some, move the others further back, retype them.
    old = [
        {**s, "days_before": s["days_before"] + 3, "event_type": "purchase"}
        for s in older
        if rng.random() < 0.5
    ]
    base = _features(_rows(past), path)
    changed = _features(_rows(recent + old), path)
    columns = [f.name for f in FS.features if f.reach(FS.lookback_days) <= reach]
    profiles = base.index.intersection(changed.index)
    # Every profile with a recent event is in both snapshots: the comparison is never empty.
    assert {s["profile"] for s in recent} <= set(profiles) and columns
    pd.testing.assert_frame_equal(base.loc[profiles, columns], changed.loc[profiles, columns])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", [7, 30, 90])
def test_an_event_on_a_windows_first_or_last_day_counts(path, window):
    rows = [
        event(window, "page_view", hour=0),  # the first instant of the window's first day: in
        event(1, "page_view", hour=23),  # the last hour before as_of: in
        event(window + 1, "page_view", hour=23),  # one hour before the window opens: out
        event(0, "page_view", hour=0),  # at as_of: never
    ]
    row = snapshot(rows, path=path).loc["p1"]
    assert row[f"event_count_{window}d"] == 2
    assert row["event_count_365d"] == 3


# --- the identity graph at as_of: links first observed at or after as_of never matter ---

identity_event_strategy = st.fixed_dictionaries(
    {
        "days_before": st.integers(min_value=1, max_value=60),
        "hour": st.integers(min_value=0, max_value=23),
        "event_type": st.sampled_from(EVENT_TYPES),
        "ecid": st.sampled_from([None, "d1", "d2", "d3", "d4"]),
        "email_sha256": st.sampled_from([None, "e1", "e2"]),
        "crm_id": st.sampled_from([None, "C1", "C2"]),
        "revenue": st.floats(min_value=1, max_value=500).map(lambda x: round(x, 2)),
    }
)


def _identity_rows(specs: list[dict]) -> pa.Table:
    rows = {
        "timestamp": [ts(s["days_before"], s["hour"]) for s in specs],
        "event_type": [s["event_type"] for s in specs],
        # An event needs an identity: a device of its own when it drew none.
        "ecid": [
            s["ecid"] or (None if s["email_sha256"] or s["crm_id"] else f"solo{i}")
            for i, s in enumerate(specs)
        ],
        "email_sha256": [s["email_sha256"] for s in specs],
        "crm_id": [s["crm_id"] for s in specs],
        "revenue": [s["revenue"] if s["event_type"] == "purchase" else None for s in specs],
    }
    types = {"timestamp": pa.timestamp("us"), "revenue": pa.float64()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in rows.items()})


def _snapshots_as_of(path, specs: list[dict], config, paths=tuple(PATHS)) -> dict[str, pd.DataFrame]:
    """Each path's snapshot at AS_OF over the graph then, rows named by their identities."""
    from propensity.pipeline.jobs import events as event_jobs

    pq.write_table(_identity_rows(specs), path)
    loaded = event_jobs.load_events(path, config)
    con, sources = loaded.con, loaded.sources(AS_OF)
    frames = {
        plan: sql_compiler.build_snapshot(
            con, FS, AS_OF, plan=plan, events=sources.events, profiles=sources.profiles
        )
        for plan in ("windows", "buckets")
        if plan in paths
    }
    if "stacked" in paths:
        reattributed = loaded.graph.reattributed([AS_OF], "events")
        stacked_build.build_snapshots(con, FS, [AS_OF], reattributed=reattributed)
        frames["stacked"] = con.execute("SELECT * FROM snapshot_features").df()
    members = con.execute(f"""
        SELECT profile_id, string_agg(namespace || ':' || value, ',' ORDER BY namespace, value) AS who
        FROM {sources.identity_map} GROUP BY profile_id
    """).df()
    who = dict(zip(members["profile_id"], members["who"], strict=True))
    return {
        name: frame.assign(profile_id=frame["profile_id"].map(who)).set_index("profile_id").sort_index()
        for name, frame in frames.items()
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(identity_event_strategy, min_size=1, max_size=14),
    future=st.lists(identity_event_strategy, min_size=1, max_size=8),
)
def test_links_observed_at_or_after_as_of_never_change_a_snapshot(history, future):
    """With future events (whose identities link devices, emails and accounts seen before
    as_of), every path gives the snapshot of the past alone: same profiles, same values,
    same guardrail splits (a low identity limit and two accounts make some)."""
    import tempfile
    from pathlib import Path

    from propensity.core.config import IdentityConfig, ProjectConfig

    config = ProjectConfig(identity=IdentityConfig(max_identities_per_profile=3))
    later = [{**s, "days_before": -(s["days_before"] % 40)} for s in future]
    with tempfile.TemporaryDirectory() as tmp:
        alone = _snapshots_as_of(Path(tmp) / "past.parquet", history, config, ("windows",))["windows"]
        for path, frame in _snapshots_as_of(Path(tmp) / "all.parquet", history + later, config).items():
            pd.testing.assert_frame_equal(frame, alone, check_dtype=False, obj=path)


@pytest.mark.parametrize("plan", ["windows", "buckets", "rollup"])
def test_the_spark_spelling_means_the_same_as_duckdbs(luma_small, config, plan):
    """The Spark dialect's SQL, read as Spark SQL and run here, gives DuckDB's values."""
    import sqlglot

    from propensity.pipeline.jobs import events as event_jobs

    con = event_jobs.load_events(luma_small, config).con
    fs = build_registry(config.features, ["yoga", "running"])
    dates = [dt.date(2025, 6, 12), dt.date(2025, 8, 1)]
    if plan == "rollup":
        sql_compiler.build_rollup(con, fs)
        native = sql_compiler.snapshots_sql(fs, dates, relation_columns(con, "profiles"))
        spark = sql_compiler.snapshots_sql(fs, dates, relation_columns(con, "profiles"), dialect=SPARK)
    else:
        native = sql_compiler.snapshot_sql(fs, dates[0], relation_columns(con, "profiles"), plan=plan)
        spark = sql_compiler.snapshot_sql(
            fs, dates[0], relation_columns(con, "profiles"), dialect=SPARK, plan=plan
        )
    assert "EXCLUDE" not in spark and '"' not in spark
    (translated,) = sqlglot.transpile(spark, read="spark", write="duckdb")
    expected = con.execute(native).df()
    got = con.execute(f"SELECT * FROM ({translated}) ORDER BY as_of, profile_id").df()
    assert len(expected) > 100
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_stacked_counts_stay_exact_when_a_day_overflows_the_packed_fields(monkeypatch):
    # Daily 0/1 counts travel packed in PACK_BITS-bit fields; a busier day must not corrupt them.
    monkeypatch.setattr(stacked_build, "PACK_BITS", 2)
    busy = [event(3, "page_view", hour=h % 24, channel="mobile_app") for h in range(9)]
    rows = [*busy, event(3, "add_to_cart", product_category="yoga"), event(40, "purchase", revenue=20.0)]
    stacked = snapshot(rows, path="stacked")
    assert stacked.loc["p1", "page_view_count_7d"] == 9
    assert stacked.loc["p1", "channel_share_mobile_app_30d"] == pytest.approx(0.9)
    pd.testing.assert_frame_equal(stacked, snapshot(rows, path="windows"), check_dtype=False)


@pytest.mark.parametrize("path", PATHS)
def test_categories_named_by_the_data_make_valid_feature_names(path):
    fs = build_registry(CONFIG, ["Yoga Mats", "Kids' shoes", "yoga-mats"])
    names = [f.name for f in fs.features if f.family == "category"]
    assert "category_view_count_30d_yoga_mats" in names and "category_view_count_30d_yoga_mats_2" in names
    assert "days_since_last_purchase_kids_shoes" in names
    rows = [
        event(3, "product_view", product_category="Yoga Mats"),
        event(2, "product_view", product_category="yoga-mats"),
        event(5, "purchase", revenue=30.0, product_category="Kids' shoes"),
    ]
    con = connection(rows)
    if path == "stacked":
        stacked_build.build_snapshots(con, fs, [AS_OF])
        row = con.execute("SELECT * FROM snapshot_features").df().iloc[0]
    else:
        row = sql_compiler.build_snapshot(con, fs, AS_OF, plan=path).iloc[0]
    assert row["category_view_count_30d_yoga_mats"] == 1 and row["category_view_count_30d_yoga_mats_2"] == 1
    assert row["days_since_last_purchase_kids_shoes"] == 5
    label = next(f.label for f in fs.features if f.name == "days_since_last_purchase_kids_shoes")
    assert label == "Days since the last Kids' shoes purchase"


def test_registry_order_is_pinned():
    """The registry's names, labels, SQL and order are the feature table's columns: composing
    the families differently must not move, rename or rewrite one (pinned by hash)."""
    families = [(k, len(list(g))) for k, g in itertools.groupby(f.family for f in FS.features)]
    assert families == [
        ("activity", 72),
        ("recency", 18),
        ("monetary", 12),
        ("funnel", 17),
        ("channel", 32),
        ("category", 14),
        ("purchase_cycle", 8),
        ("category", 12),
        ("trend", 4),
        ("profile", 2),
        ("season", 4),
    ]
    text = "\n".join(f"{f.name}|{f.label}|{f.sql}" for f in FS.features if f.family != "season")
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "0aee7238fb476ff095c908232d4ab003a1db00666b86a2b9212c9cc1dabd507e"
    )
    season = "\n".join(f"{f.name}|{f.label}|{f.sql}" for f in FS.features if f.family == "season")
    assert hashlib.sha256(season.encode()).hexdigest() == (
        "dfa0491c975ee34d048acba1f3fb27c72315bcb16265c26f99ab76a65aa2623d"
    )
    assert list(FS.measures)[:3] == ["events", "page_view", "product_view"]
    assert list(FS.measures)[-3:] == ["view_running", "purchase_running", "revenue_running"]
