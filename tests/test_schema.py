"""The event contract: bad input is named precisely, nothing is silently lost."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from propensity.core.errors import UserError
from propensity.pipeline.jobs import ingest as ingest_jobs
from tests.conftest import invoke, write_events

GOOD = {"timestamp": "2025-03-01T10:00:00", "event_type": "page_view", "ecid": "dev-1"}


def test_missing_required_column_names_file_and_column(tmp_path, runner):
    path = write_events(tmp_path / "events.csv", [{"timestamp": "2025-03-01", "ecid": "d1"}])
    result = invoke(runner, "validate", "--events", str(path))
    assert result.exit_code == 2
    assert "events.csv" in result.output and "`event_type`" in result.output
    assert "Traceback" not in result.output


def test_no_identity_column_is_refused(tmp_path, runner):
    path = write_events(tmp_path / "events.csv", [{"timestamp": "2025-03-01", "event_type": "purchase"}])
    result = invoke(runner, "ingest", "--events", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "no identity column" in result.output
    assert not (tmp_path / "out").exists()


def test_unreadable_file_is_one_clear_line(tmp_path, runner):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"this is not parquet")
    result = invoke(runner, "validate", "--events", str(path))
    assert result.exit_code == 2
    assert "events.parquet" in result.output and "cannot read events" in result.output


def test_unsupported_suffix_and_missing_path(tmp_path, runner):
    (tmp_path / "events.xlsx").write_text("x")
    assert (
        "unsupported file type"
        in invoke(runner, "validate", "--events", str(tmp_path / "events.xlsx")).output
    )
    result = invoke(runner, "validate", "--events", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_wrong_column_type_is_named(tmp_path, config):
    path = write_events(tmp_path / "events.parquet", [{**GOOD, "timestamp": 12345}])
    with pytest.raises(UserError, match=r"column `timestamp` has type BIGINT"):
        ingest_jobs.validate(path, config)


BAD_ROWS = [
    GOOD,
    {**GOOD, "timestamp": "not a time"},  # row 2
    {"timestamp": "2025-03-01", "event_type": "page_view", "ecid": None},  # row 3: no identity
    {**GOOD, "event_type": "purchase", "revenue": -5},  # row 4
    {**GOOD, "timestamp": "2030-01-01T00:00:00"},  # row 5: future
]


def test_bad_rows_fail_by_default_naming_rows_and_reasons(tmp_path, runner):
    path = write_events(tmp_path / "events.csv", BAD_ROWS)
    result = invoke(
        runner, "ingest", "--events", str(path), "--out", str(tmp_path / "out"), "--as-of", "2025-06-01"
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "4 bad rows" in text
    for fragment in (
        "row 2 (unparseable_timestamp)",
        "row 3 (no_identity)",
        "row 4 (negative_revenue)",
        "row 5 (future_timestamp)",
        "--on-bad-rows quarantine",
    ):
        assert fragment in text
    assert not (tmp_path / "out").exists()


def test_quarantine_writes_bad_rows_with_reasons_and_accounts_for_every_row(tmp_path, config):
    path = write_events(tmp_path / "events.csv", [*BAD_ROWS, GOOD])  # last row duplicates the first
    summary = ingest_jobs.ingest(
        path, tmp_path / "out", config, on_bad_rows="quarantine", as_of=pd.Timestamp("2025-06-01").date()
    )
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pandas()
    assert sorted(quarantine["reason"]) == [
        "future_timestamp",
        "negative_revenue",
        "no_identity",
        "unparseable_timestamp",
    ]
    assert sorted(quarantine["source_row"]) == [2, 3, 4, 5]
    assert summary.rows_in == 6
    assert summary.rows_in == summary.rows_written + summary.duplicates_dropped + summary.rows_quarantined
    assert (summary.rows_written, summary.duplicates_dropped) == (1, 1)


def test_xdm_types_are_mapped_and_unknown_types_kept(tmp_path, config):
    rows = [
        {**GOOD, "event_type": "commerce.purchases", "revenue": 30.0},
        {**GOOD, "event_type": "web.webpagedetails.pageViews", "timestamp": "2025-03-01T11:00:00"},
        {**GOOD, "event_type": "class_booked", "timestamp": "2025-03-01T12:00:00"},
    ]
    path = write_events(tmp_path / "events.parquet", rows)
    ingest_jobs.ingest(path, tmp_path / "out", config)
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    assert sorted(events["event_type"]) == ["class_booked", "page_view", "purchase"]


def test_timestamps_are_utc(tmp_path, config):
    rows = [
        {**GOOD, "timestamp": "2025-03-01T10:00:00+02:00", "event_id": "a"},
        {**GOOD, "timestamp": "2025-03-01T10:00:00Z", "event_id": "b"},
        {**GOOD, "timestamp": "2025-03-01 10:00:00", "event_id": "c"},
    ]
    path = write_events(tmp_path / "events.jsonl", rows)
    ingest_jobs.ingest(path, tmp_path / "out", config)
    events = pd.read_parquet(tmp_path / "out" / "events.parquet").set_index("event_id")
    assert str(events.loc["a", "timestamp"]) == "2025-03-01 08:00:00"
    assert str(events.loc["b", "timestamp"]) == "2025-03-01 10:00:00"
    assert str(events.loc["c", "timestamp"]) == "2025-03-01 10:00:00"


def test_tz_aware_parquet_is_converted(tmp_path, config):
    frame = pd.DataFrame([GOOD])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("America/New_York")
    frame.to_parquet(tmp_path / "events.parquet")
    ingest_jobs.ingest(tmp_path / "events.parquet", tmp_path / "out", config)
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    assert str(events["timestamp"].iloc[0]) == "2025-03-01 15:00:00"


def test_raw_email_and_phone_never_written(tmp_path, config):
    rows = [
        {**GOOD, "email": "Sarah.Lee@Example.com", "phone": "+1 (555) 123-4567"},
        {**GOOD, "timestamp": "bad", "email": "Sarah.Lee@Example.com"},
    ]
    path = write_events(tmp_path / "events.csv", rows)
    profiles = write_events(
        tmp_path / "profiles.csv", [{"email": " sarah.lee@example.com ", "consent_marketing": "y"}]
    )
    ingest_jobs.ingest(path, tmp_path / "out", config, profiles=profiles, on_bad_rows="quarantine")
    for file in (tmp_path / "out").iterdir():
        data = file.read_bytes().lower()
        assert b"sarah.lee" not in data, file.name
        assert b"123-4567" not in data and b"5551234567" not in data, file.name
    identity = pd.read_parquet(tmp_path / "out" / "identity_map.parquet")
    # The messy and the clean spelling of the email are one identity.
    assert (identity["namespace"] == "email_sha256").sum() == 1
    assert (identity["namespace"] == "phone_sha256").sum() == 1


def test_duplicate_event_ids_dropped_and_missing_ids_derived_stably(tmp_path, config):
    rows = [
        {**GOOD, "event_id": "x"},
        {**GOOD, "event_id": "x", "timestamp": "2025-03-02"},
        {**GOOD, "timestamp": "2025-03-03"},
        {**GOOD, "timestamp": "2025-03-03"},
    ]
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "events.csv", index=False)
    first = ingest_jobs.ingest(tmp_path / "events.csv", tmp_path / "a", config)
    ingest_jobs.ingest(tmp_path / "events.csv", tmp_path / "b", config)
    assert first.duplicates_dropped == 2 and first.rows_written == 2
    a = pd.read_parquet(tmp_path / "a" / "events.parquet")
    b = pd.read_parquet(tmp_path / "b" / "events.parquet")
    pd.testing.assert_frame_equal(a, b)
    # The first of the duplicate "x" rows (file order) is kept.
    assert str(a.set_index("event_id").loc["x", "timestamp"]) == "2025-03-01 10:00:00"


def test_hive_partitioned_directory(tmp_path, config):
    for day in ("2025-03-01", "2025-03-02"):
        part = tmp_path / "events" / f"date={day}"
        part.mkdir(parents=True)
        write_events(part / "part-0.parquet", [{**GOOD, "timestamp": f"{day}T09:00:00", "ecid": day}])
    summary = ingest_jobs.validate(tmp_path / "events", config)
    assert summary.rows_written == 2 and summary.profiles == 2


def test_invalid_config_names_the_key(tmp_path, runner):
    cfg = tmp_path / "project.yaml"
    cfg.write_text("identity:\n  max_identities_per_profile: lots\nsurprise: 1\n")
    result = invoke(runner, "validate", "--config", str(cfg), "--events", str(tmp_path))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "identity.max_identities_per_profile" in text and "surprise" in text and "unknown key" in text


def test_bad_option_values(tmp_path, runner):
    path = write_events(tmp_path / "events.csv", [GOOD])
    assert "YYYY-MM-DD" in invoke(runner, "validate", "--events", str(path), "--as-of", "June").output
    assert (
        "--on-bad-rows" in invoke(runner, "validate", "--events", str(path), "--on-bad-rows", "ignore").output
    )


def test_unavailable_engine_is_refused_not_silently_replaced(tmp_path):
    # `validate` runs on either engine; a DuckDB-only step (explain, evaluate, monitor: they
    # open the events on the DuckDB engine) given engine spark refuses.
    from propensity.core.config import EngineConfig, ProjectConfig
    from propensity.features.duckdb import DuckDBEngine
    from propensity.pipeline.jobs.events import load_events

    path = write_events(tmp_path / "events.csv", [GOOD])
    config = ProjectConfig(engine=EngineConfig(name="spark"))
    with pytest.raises(UserError, match="'spark' is not available yet for this step"):
        load_events(path, config, engine=DuckDBEngine(config))


def test_ingest_output_from_an_older_format_is_named(tmp_path, runner, config):
    import json

    path = write_events(tmp_path / "events.csv", [GOOD])
    ingest_jobs.ingest(path, tmp_path / "out", config)
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 1}))
    result = invoke(
        runner, "features", "--events", str(tmp_path / "out"), "--out", str(tmp_path / "f.parquet")
    )
    assert result.exit_code == 2 and "run `propensity ingest` again" in " ".join(result.output.split())
