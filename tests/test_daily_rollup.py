"""The daily rollup streamed from profile-sorted events (``features.build.daily_rollup``): the
same stacked snapshots as the grouped rollup and as the direct SQL path, point in time."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from propensity.core.config import FeatureConfig
from propensity.features.build import build_registry, daily_rollup, sql_compiler, stacked_build

AS_OFS = [dt.date(2025, 3, 1), dt.date(2025, 6, 1)]
FS = build_registry(FeatureConfig(categories=["yoga", "running"]))

event_strategy = st.fixed_dictionaries(
    {
        "profile": st.sampled_from(["a", "b", "c"]),
        "days_before": st.integers(min_value=-60, max_value=800),
        "hour": st.integers(min_value=0, max_value=23),
        "event_type": st.sampled_from(
            ["page_view", "product_view", "add_to_cart", "checkout", "purchase", "email_open", "store_visit"]
        ),
        "channel": st.sampled_from(["web", "mobile_app", "email", "store"]),
        "category": st.sampled_from([None, "yoga", "running"]),
        "revenue": st.one_of(st.none(), st.floats(min_value=1, max_value=500).map(lambda x: round(x, 2))),
        "order_lines": st.sampled_from([None, 0, 1, 2]),
        "known": st.booleans(),
    }
)


def _at(days: st.SearchStrategy[int]) -> st.SearchStrategy[dict]:
    """Events whose ``days_before`` (before the last as-of date) is drawn from ``days``."""
    return st.builds(lambda s, d: {**s, "days_before": d}, event_strategy, days)


def _connection(specs: list[dict], sort: bool) -> duckdb.DuckDBPyConnection:
    """Events keyed by profile_key as an ingest writes them: sorted by (profile_key, time) when
    ``sort``, else in reverse time order; a ``profiles`` table of the keys."""
    base = pd.Timestamp(AS_OFS[-1])
    frame = pd.DataFrame(
        {
            "profile_id": [s["profile"] for s in specs],
            "timestamp": [
                base - pd.Timedelta(days=s["days_before"]) + pd.Timedelta(hours=s["hour"]) for s in specs
            ],
            "event_type": [s["event_type"] for s in specs],
            "channel": [s["channel"] for s in specs],
            "product_category": pd.Series([s["category"] for s in specs], dtype=object),
            "revenue": pd.Series(
                [s["revenue"] if s["event_type"] == "purchase" else None for s in specs], dtype=float
            ),
            "crm_id": pd.Series(["C" + s["profile"] if s["known"] else None for s in specs], dtype=object),
            "email_sha256": pd.Series([None] * len(specs), dtype=object),
            "phone_sha256": pd.Series([None] * len(specs), dtype=object),
            "new_identities": [int(s["known"]) for s in specs],
            "order_lines": pd.Series([s["order_lines"] for s in specs], dtype="Int32"),
            "order_revenue": pd.Series([s["revenue"] for s in specs], dtype=float),
        }
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("_events", frame)
    con.execute("""
        CREATE TABLE profiles AS
        SELECT profile_id, (row_number() OVER (ORDER BY profile_id) - 1)::INTEGER AS profile_key
        FROM (SELECT DISTINCT profile_id FROM _events)
    """)
    order = "profile_key, timestamp" if sort else "timestamp DESC"
    con.execute(f"""
        CREATE TABLE events AS
        SELECT e.* REPLACE (CAST(timestamp AS TIMESTAMP) AS timestamp), p.profile_key
        FROM _events e JOIN profiles p USING (profile_id) ORDER BY {order}
    """)
    return con


def _stacked(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    stacked_build.build_snapshots(con, FS, AS_OFS)
    return con.execute("SELECT * FROM snapshot_features ORDER BY as_of, profile_id").df()


def _no_grouped_rollup(*args, **kwargs):
    raise AssertionError("sorted events must be rolled up by the stream, not the grouped aggregate")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(_at(st.integers(1, 800)), min_size=1, max_size=30),
    future=st.lists(_at(st.integers(-60, 0)), min_size=1, max_size=8),
    batch_rows=st.integers(min_value=1, max_value=7),
    split=st.booleans(),
)
def test_the_streamed_rollup_equals_the_direct_path_and_sees_nothing_after_as_of(
    past, future, batch_rows, split
):
    # Batches of a few rows: runs of one (profile, day) straddle batch boundaries; ``split``:
    # one stream per range of profile keys, each on its own cursor and thread.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daily_rollup, "BATCH_ROWS", batch_rows)
        patch.setattr(stacked_build, "_grouped_rollup", _no_grouped_rollup)
        patch.setattr(stacked_build, "STREAM_MIN_PROFILES", 1 if split else 10**9)
        con = _connection(past + future, sort=True)
        streamed = _stacked(con)
        without_future = _stacked(_connection(past, sort=True))
    assert len(streamed) > 0
    # Point in time: events at or after the last as-of date change nothing.
    pd.testing.assert_frame_equal(streamed, without_future)
    for as_of in AS_OFS:
        direct = sql_compiler.build_snapshot(con, FS, as_of)
        part = streamed[streamed["as_of"] == pd.Timestamp(as_of)].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, direct, check_dtype=False, check_exact=True)
    # The grouped aggregate gives the same rollup, column for column.
    _, columns = stacked_build._rollup_columns(FS, packed=True)
    day = sql_compiler.DUCKDB.day("timestamp")
    stream = daily_rollup.stream_rollup(con, "events", columns, day)
    grouped = stacked_build._grouped_rollup(con, "events", columns, "")
    # Ranges of keys, empty ones too, each streamed on a cursor of its own, joined in order.
    split_stream = daily_rollup.split_stream_rollup(con, "events", "TRUE", columns, day, [-1, 0, 1, 1, 9])
    for rollup in (grouped, split_stream):
        for a, b in zip(
            [stream[0], stream[1], *stream[2], *stream[3]],
            [rollup[0], rollup[1], *rollup[2], *rollup[3]],
            strict=True,
        ):
            pd.testing.assert_series_equal(pd.Series(a, dtype=float), pd.Series(b, dtype=float))


def test_events_out_of_order_fall_back_to_the_grouped_rollup():
    specs = [
        {**event, "profile": profile, "days_before": days}
        for profile, days in (("a", 5), ("b", 3), ("a", 40), ("c", 2), ("b", 1))
        for event in [
            {"hour": 3, "event_type": "purchase", "channel": "web", "category": "yoga", "revenue": 12.5}
            | {"order_lines": None, "known": True}
        ]
    ]
    unsorted = _connection(specs, sort=False)
    _, columns = stacked_build._rollup_columns(FS, packed=True)
    day = sql_compiler.DUCKDB.day("timestamp")
    assert daily_rollup.stream_rollup(unsorted, "events", columns, day) is None
    assert daily_rollup.split_stream_rollup(unsorted, "events", "TRUE", columns, day, [0, 1, 3]) is None
    pd.testing.assert_frame_equal(_stacked(unsorted), _stacked(_connection(specs, sort=True)))


def test_an_ingest_streams_its_rollup_and_its_profile_ranges_read_only_their_row_groups(luma_ingested):
    import re

    from propensity.core.config import ProjectConfig
    from propensity.features.duckdb import scoring as duckdb_scoring
    from propensity.pipeline.jobs import events as event_jobs

    con = event_jobs.load_events(luma_ingested, ProjectConfig()).con
    # Written sorted by (profile_key, time): the stacked build never needs the grouped rollup.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacked_build, "_grouped_rollup", _no_grouped_rollup)
        assert stacked_build.build_snapshots(con, FS, AS_OFS) > 1000
    total, profiles = con.execute("SELECT count(*), count(DISTINCT profile_id) FROM events").fetchone()
    ranges = duckdb_scoring.profile_ranges(con, 4)
    assert len(ranges) == 4
    counts = [
        con.execute(f"SELECT count(*), count(DISTINCT profile_id) FROM events WHERE {r}").fetchone()
        for r in ranges
    ]
    # Every event and profile in exactly one range, and the ranges about even.
    assert sum(c[0] for c in counts) == total and sum(c[1] for c in counts) == profiles
    assert min(c[1] for c in counts) > profiles / 8
    plan = con.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM events WHERE {ranges[1]}").fetchall()[0][1]
    scanned, groups = map(int, re.search(r"Row Groups Scanned: (\d+) / (\d+)", plan).groups())
    assert groups >= 4 and scanned < groups


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(past=st.lists(_at(st.integers(1, 400)), min_size=1, max_size=30), cut=st.integers(0, 3))
def test_features_of_a_range_of_keys_are_those_profiles_rows_of_the_whole_build(past, cut):
    # Scoring's entry point: one date, the profiles of a range of keys, split into streams.
    con = _connection(past, sort=True)
    as_of = AS_OFS[-1]
    whole = stacked_build.build_snapshots(con, FS, [as_of], table="whole")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacked_build, "STREAM_MIN_PROFILES", 1)
        parts = [
            stacked_build.build_snapshots(con, FS, [as_of], table=f"part_{i}", key_range=key_range)
            for i, key_range in enumerate([(0, cut), (cut, 3)])
        ]
    assert sum(parts) == whole
    expected = con.execute("SELECT * FROM whole ORDER BY profile_id").df()
    got = con.execute(
        "SELECT * FROM (SELECT * FROM part_0 UNION ALL SELECT * FROM part_1) ORDER BY profile_id"
    ).df()
    pd.testing.assert_frame_equal(got, expected)
    keys = con.execute("SELECT profile_key FROM part_0 JOIN profiles USING (profile_id)").fetchall()
    assert all(k < cut for (k,) in keys)
