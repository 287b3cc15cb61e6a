"""Ingest on DuckDB at any size: a scratch folder for the staged events, and ``events.parquet``
written in profile-key ranges.

The events file is sorted by ``(profile_key, timestamp, event_id)`` (ingest format 5). One
``ORDER BY`` over every event would sort them all at once; instead the stitched events are
split once into profile-key ranges of about ``ingest.bucket_rows`` events (cut on the profiles'
event counts), and each range is sorted alone and appended to the one file in key order, so
the file is the same rows in the same order and its row groups still prune by key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow.parquet as pq

from propensity.core.config import EngineConfig
from propensity.features.connection import arrow_batches
from propensity.features.ingest.dedup import insertion_order
from propensity.features.ingest.manifest import IngestFile, ingest_table_sql
from propensity.features.sql import sql_ident, sql_string

# DuckDB's own Parquet row group size: the file prunes by key as finely as a COPY would write it.
ROW_GROUP_ROWS = 122_880
SCRATCH_DB = "ingest_scratch"  # the attached scratch database's name on the connection


class Scratch:
    """A private folder (under ``engine.temp_directory`` when set) for one ingest's staged
    events: an attached DuckDB database and the split events; removed whole by ``remove``."""

    PREFIX = "propensity-ingest-"

    def __init__(self, parent: str | None = None) -> None:
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=parent))
        remove_orphans(self.path.parent)
        (self.path / "owner").write_text(str(os.getpid()))

    def attach(self, con: duckdb.DuckDBPyConnection) -> str:
        """The scratch database attached to ``con``; its name."""
        con.execute(f"ATTACH {sql_string(str(self.path / 'staged.duckdb'))} AS {SCRATCH_DB}")
        return SCRATCH_DB

    def remove(self) -> None:
        """The folder and all in it gone (an open database file is unlinked, freed on close)."""
        shutil.rmtree(self.path, ignore_errors=True)


def remove_orphans(parent: Path) -> None:
    """Scratch folders under ``parent`` whose ingest died without cleaning up (kill -9): removed
    only when their ``owner`` file names a process that no longer runs; a folder of a running
    ingest, or one without an owner file, is never touched."""
    for folder in parent.glob(f"{Scratch.PREFIX}*"):
        try:
            pid = int((folder / "owner").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue


T = TypeVar("T")


def staged_in_scratch(
    con: duckdb.DuckDBPyConnection, engine: EngineConfig, bucket_rows: int, stage: Callable[..., T]
) -> tuple[Scratch, T]:
    """``stage(scratch=database, bucket_rows=bucket_rows)`` run with a new scratch database (under
    ``engine.temp_directory``) attached to ``con``: the scratch and what ``stage`` returned; if it
    fails, the connection is closed and the scratch removed."""
    scratch = Scratch(engine.temp_directory)
    try:
        return scratch, stage(scratch=scratch.attach(con), bucket_rows=bucket_rows)
    except BaseException:
        con.close()
        scratch.remove()
        raise


def tie_scratch(owner: Any, scratch: Scratch | None) -> Any:
    """``owner``, with ``scratch`` removed once it is collected (the staged events' files live as
    long as the views over them)."""
    if scratch is not None:
        weakref.finalize(owner, scratch.remove)
    return owner


def key_ranges(con: duckdb.DuckDBPyConnection, bucket_rows: int) -> list[tuple[int, int]]:
    """Profile-key ranges ``[low, high)`` in key order, each about ``bucket_rows`` events (at least
    one profile), cut on ``profiles.event_count``; one range when every event fits one."""
    counts = con.execute("SELECT profile_key, event_count FROM profiles ORDER BY profile_key").fetchnumpy()
    keys = np.asarray(counts["profile_key"], dtype=np.int64)
    if len(keys) == 0:
        return [(0, 1)]
    before = np.cumsum(np.asarray(counts["event_count"], dtype=np.int64)) - counts["event_count"]
    bucket = before // max(1, bucket_rows)
    starts = np.flatnonzero(np.diff(bucket, prepend=-1))
    lows = [int(keys[i]) for i in starts]
    lows[0] = 0
    return list(zip(lows, [*lows[1:], int(keys[-1]) + 1], strict=True))


def _bucket_sql(ranges: list[tuple[int, int]]) -> str:
    """The range each event's profile_key falls in, as an index."""
    cases = " ".join(f"WHEN profile_key < {high} THEN {i}" for i, (_, high) in enumerate(ranges[:-1]))
    return f"CASE {cases} ELSE {len(ranges) - 1} END"


def write_events(
    con: duckdb.DuckDBPyConnection,
    table: IngestFile,
    view: str,
    columns: list[str],
    path: str,
    scratch: Path,
    bucket_rows: int,
) -> int:
    """``table`` (the events) from ``view`` as one Parquet file at ``path``, sorted range by range
    (:func:`key_ranges`); returns how many ranges. One range: a single sorted COPY."""
    ranges = key_ranges(con, bucket_rows)
    if len(ranges) == 1:
        sql = ingest_table_sql(table, view, columns)
        con.execute(f"COPY ({sql}) TO {sql_string(path)} (FORMAT parquet, COMPRESSION zstd)")
        return 1
    chosen = [c for c in columns if c not in table.drop]
    split = scratch / "events_by_range"
    # One pass splits the events by range; their order is set by each range's sort.
    with insertion_order(con, False):
        con.execute(
            f"COPY (SELECT {', '.join(sql_ident(c) for c in chosen)}, {_bucket_sql(ranges)} AS _range "
            f"FROM {view}) TO {sql_string(str(split))} (FORMAT parquet, PARTITION_BY (_range))"
        )
    writer = None
    try:
        for i in range(len(ranges)):
            part = split / f"_range={i}"
            if not part.is_dir():  # a range whose profiles have no events
                continue
            source = f"read_parquet({sql_string(str(part / '*.parquet'))}, hive_partitioning = false)"
            for batch in arrow_batches(con, ingest_table_sql(table, source, chosen), ROW_GROUP_ROWS):
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
            shutil.rmtree(part)
    finally:
        if writer is not None:
            writer.close()
    return len(ranges)
