"""A scoring run's scored rows on DuckDB, from the first partition to the ranked partition file.

Each partition's scored rows go to a scratch Arrow IPC file as they come (their buffers as they
are: no Parquet encoding, read back memory-mapped), while the run keeps what ranking needs:
probabilities, scores, bucket sizes and whether the profile ids came in ascending order. Then
the percentile (``ceil(100 * cume_dist)`` over the whole run, as on Spark) is added and the
partition written as zstd Parquet once: straight through when the rows came in profile order
(the stacked build's key ranges), else through DuckDB's window and sort.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # pa.ipc: the scratch file
import pyarrow.parquet as pq

from propensity.core.io import atomic_path
from propensity.core.score_table import BUCKETS
from propensity.features.sql import sql_string

# Rows per row group of the ranked partition file.
ROW_GROUP_ROWS = 122_880


class UnrankedRun:
    """The scored rows of a run as they come, in a scratch Arrow IPC file (the batches' buffers
    as they are: no Parquet encoding, read back memory-mapped), and what the ranked write needs
    of them: counts, probabilities and scores, bucket sizes, and whether the profile ids arrive
    strictly ascending (profile-key partitions, each sorted, come in profile order)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.profiles = self.eligible = self.scored = 0
        self.probabilities: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self.buckets: dict[str, int] = {}
        self.sorted = True
        self._last: str | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def add(self, rows: pa.Table | None) -> None:
        """Write ``rows`` (one partition's scored rows, or None) after the others."""
        if rows is None:
            return
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self.path), rows.schema)
        self._writer.write_table(rows)
        self.probabilities.append(rows.column("probability").to_numpy())
        self._scores.append(rows.column("score").to_numpy())
        for item in pc.value_counts(rows.column("bucket").combine_chunks()).to_pylist():
            self.buckets[item["values"]] = self.buckets.get(item["values"], 0) + item["counts"]
        ids = rows.column("profile_id").combine_chunks()
        if self.sorted and len(ids):
            ascending = len(ids) < 2 or pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py()
            self.sorted = ascending and (self._last is None or self._last < ids[0].as_py())
            self._last = ids[-1].as_py()

    def scores(self) -> np.ndarray:
        """Every scored row's score (0-100), in the order written."""
        return np.concatenate(self._scores) if self._scores else np.array([], dtype=float)

    def rows(self) -> pa.Table:
        """The rows written, read back memory-mapped (no copy)."""
        # The table's buffers keep the mapping open; the scratch folder's removal frees the file.
        return pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()

    def write_ranked(self, con: duckdb.DuckDBPyConnection, target: Path) -> dict[str, int]:
        """The run ranked into ``target`` (:func:`write_ranked_in_order` when the rows came in
        profile order, else :func:`write_ranked`); the bucket sizes."""
        if self._writer is None:
            return write_ranked(con, None, target)
        self._writer.close()
        if self.sorted:  # in profile order already: no sort, no SQL pass
            return write_ranked_in_order(self, target)
        return write_ranked(con, self, target)


def percentiles(probability: np.ndarray) -> np.ndarray:
    """``greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))`` as SMALLINT: ties
    share the rank of the last of them."""
    ranked = np.sort(probability)
    at_or_below = np.searchsorted(ranked, probability, side="right")
    return np.maximum(1, np.ceil(100 * (at_or_below / len(probability)))).astype(np.int16)


def write_ranked_in_order(unranked: UnrankedRun, target: Path) -> dict[str, int]:
    """:func:`write_ranked` for rows written in profile order: the percentiles from the
    probabilities held in memory, the rows copied over once, ROW_GROUP_ROWS at a time
    (a row group each), with theirs."""
    percentile = percentiles(np.concatenate(unranked.probabilities))
    rows = unranked.rows()
    scored_at = rows.schema.field("scored_at")
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        writer: pq.ParquetWriter | None = None
        for done in range(0, rows.num_rows, ROW_GROUP_ROWS):
            table = rows.slice(done, ROW_GROUP_ROWS)
            at = table.column("scored_at")
            table = table.drop_columns(["scored_at"])
            table = table.append_column("percentile", pa.array(percentile[done : done + len(table)]))
            table = table.append_column(scored_at, at)
            if writer is None:
                writer = pq.ParquetWriter(tmp / "part-0.parquet", table.schema, compression="zstd")
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return {b: int(unranked.buckets.get(b, 0)) for b in BUCKETS}


def write_ranked(
    con: duckdb.DuckDBPyConnection, unranked: UnrankedRun | None, target: Path
) -> dict[str, int]:
    """Add ``percentile`` (1-100 within this run, ties share one) and write the partition."""
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        if unranked is None:  # nobody eligible: an empty partition still says "scored, none"
            return {}
        con.register("_unranked", unranked.rows())
        try:
            con.execute(f"""
                COPY (
                    SELECT * EXCLUDE (scored_at),
                           greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))::SMALLINT
                               AS percentile,
                           scored_at
                    FROM _unranked ORDER BY profile_id
                ) TO {sql_string(str(tmp / "part-0.parquet"))} (FORMAT parquet, COMPRESSION zstd)
            """)
        finally:
            con.unregister("_unranked")
    return {b: int(unranked.buckets.get(b, 0)) for b in BUCKETS}
