"""Ingest at any size (DuckDB): the staged events kept in a scratch database, duplicates found in
event-id hash buckets and ``events.parquet`` sorted a profile-key range at a time must write
exactly what one pass writes, and leave no scratch files behind."""

from __future__ import annotations

import itertools
import json
import os

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.duckdb import ingest_write
from propensity.pipeline.jobs import ingest as ingest_jobs

TABLES = ("events", "identity_map", "identity_links", "identity_unsettled", "profile_attributes", "profiles")


def _config(tmp_path, bucket_rows: int | None = None) -> ProjectConfig:
    ingest = {"bucket_rows": bucket_rows} if bucket_rows else {}
    return ProjectConfig(engine={"temp_directory": str(tmp_path / "spill")}, ingest=ingest)


@pytest.fixture(scope="module")
def both(luma_small, tmp_path_factory):
    """luma_small ingested with every event in one range, and in ranges of 2,000 events."""
    root = tmp_path_factory.mktemp("buckets")
    whole = ingest_jobs.ingest(luma_small, root / "whole", _config(root), on_bad_rows="quarantine")
    ranged = ingest_jobs.ingest(luma_small, root / "ranged", _config(root, 2_000), on_bad_rows="quarantine")
    return root, whole, ranged


def test_ranges_write_the_same_tables_in_the_same_order(both):
    root, whole, ranged = both
    assert ranged.rows_written > 10 * 2_000  # so the events were split into many ranges
    # Duplicates were found in many hash buckets: the same drops and conflicts as one pass.
    assert whole.duplicates_dropped > 0 and whole.conflicting_duplicates > 0
    assert ranged == whole
    for name in TABLES:
        first = pd.read_parquet(root / "whole" / f"{name}.parquet")
        again = pd.read_parquet(root / "ranged" / f"{name}.parquet")
        pd.testing.assert_frame_equal(first, again, obj=name)
    manifests = [json.loads((root / d / "manifest.json").read_text()) for d in ("whole", "ranged")]
    assert manifests[0] == manifests[1]


def test_ranged_events_keep_their_row_groups_in_key_order(both):
    root, _, _ = both
    meta = pq.ParquetFile(root / "ranged" / "events.parquet").metadata
    key = meta.schema.to_arrow_schema().get_field_index("profile_key")
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    assert len(groups) > 10 and all(g.num_rows <= ingest_write.ROW_GROUP_ROWS for g in groups)
    bounds = [(g.column(key).statistics.min, g.column(key).statistics.max) for g in groups]
    # Each row group starts at or after the previous one's largest key: a key range is a run of groups.
    assert all(low >= prev_high for (_, prev_high), (low, _) in itertools.pairwise(bounds))
    assert not list((root / "spill").glob("propensity-ingest-*"))  # the scratch folders are gone


def test_key_ranges_cover_every_key_in_order_about_the_bucket_size():
    con = duckdb.connect()
    counts = [5, 0, 7, 3, 9, 1, 1, 1, 20, 2]
    con.execute(
        "CREATE TABLE profiles AS SELECT (i - 1)::INTEGER AS profile_key, c AS event_count "
        f"FROM (SELECT unnest(range(1, {len(counts) + 1})) AS i, unnest({counts}) AS c)"
    )
    ranges = ingest_write.key_ranges(con, 10)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
    assert all(high == low for (_, high), (low, _) in itertools.pairwise(ranges))
    sizes = [sum(counts[low:high]) for low, high in ranges]
    # A range holds the profiles that start within bucket_rows events of it: only its last may overflow it.
    assert sum(sizes) == sum(counts) and len(ranges) == 4
    assert all(size - counts[high - 1] < 10 for size, (_, high) in zip(sizes, ranges, strict=True))
    assert ingest_write.key_ranges(con, 1_000) == [(0, len(counts))]


def test_a_refused_ingest_leaves_no_scratch_files(luma_small, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("event_id,timestamp,event_type,ecid\ne1,not a time,page_view,E1\n")
    with pytest.raises(UserError, match="bad rows"):
        ingest_jobs.ingest(events, tmp_path / "out", _config(tmp_path), on_bad_rows="fail")
    assert not list((tmp_path / "spill").glob("propensity-ingest-*"))
    assert not (tmp_path / "out").exists()


def test_a_killed_ingests_scratch_is_removed_by_the_next_and_a_running_ones_is_kept(tmp_path):
    """kill -9 leaves a scratch folder behind: the next ingest's scratch removes it when its owner
    is gone, and leaves alone one whose owner runs (a concurrent ingest) or that names no owner."""
    import subprocess
    import sys

    from propensity.features.duckdb.ingest_write import Scratch

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    orphan = tmp_path / f"{Scratch.PREFIX}orphan"
    orphan.mkdir()
    (orphan / "owner").write_text(dead.stdout.decode().strip())
    (orphan / "staged.duckdb").write_bytes(b"x")
    alive = tmp_path / f"{Scratch.PREFIX}alive"
    alive.mkdir()
    (alive / "owner").write_text(str(os.getpid()))
    unknown = tmp_path / f"{Scratch.PREFIX}unknown"
    unknown.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "owner").write_text(dead.stdout.decode().strip())

    scratch = Scratch(str(tmp_path))
    assert not orphan.exists()
    assert alive.exists() and unknown.exists() and other.exists() and scratch.path.exists()
    scratch.remove()
    assert not scratch.path.exists()
