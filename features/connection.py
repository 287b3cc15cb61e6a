"""DuckDB connections configured the same way for every step."""

from __future__ import annotations

import os

import duckdb

from propensity.core.config import EngineConfig


def connect(engine: EngineConfig | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC, honouring the memory limit and threads.

    Past ``memory_limit`` DuckDB spills to ``temp_directory`` instead of failing, which is
    how events larger than memory are processed on one machine.
    """
    engine = engine or EngineConfig()
    if engine.name != "duckdb":
        from propensity.core.errors import UserError

        # Spark runs validate, ingest, features, train, score and segments (through the Spark engine); a step
        # without a Spark path says so rather than quietly running on one machine.
        raise UserError(
            f"engine.name: '{engine.name}' is not available yet for this step (Spark runs validate, ingest, "
            f"features, train, score and segments); use 'duckdb' for it (--engine duckdb)"
        )
    con = duckdb.connect(config={"preserve_insertion_order": True})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{engine.memory_limit or default_memory_limit()}'")
    if engine.threads:
        con.execute(f"SET threads = {int(engine.threads)}")
    if engine.temp_directory:
        con.execute(f"SET temp_directory = '{engine.temp_directory}'")
    return con


def default_memory_limit(share: float = 0.6) -> str:
    """60 % of physical memory: DuckDB's own default (80 %) leaves too little for the pandas
    frames and LightGBM that share the process; past the limit DuckDB spills to disk."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4GB"
    return f"{max(1, int(total * share / 2**20))}MB"


def relation_columns(con: duckdb.DuckDBPyConnection, relation: str) -> set[str]:
    """The column names of a table or view (none when it does not exist)."""
    try:
        return {r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall()}
    except duckdb.Error:
        return set()


def fetch_arrow(con: duckdb.DuckDBPyConnection, query: str):
    """A query's result as a pyarrow Table (DuckDB 2 calls it to_arrow_table, 1.x arrow)."""
    relation = con.sql(query)
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def arrow_batches(con: duckdb.DuckDBPyConnection, query: str, batch_rows: int):
    """A query's result as a stream of Arrow record batches of about ``batch_rows`` rows, so a
    large result never has to fit in memory at once (DuckDB 2 ``to_arrow_reader``; 1.x
    ``fetch_record_batch``)."""
    relation = con.sql(query)
    method = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return method(batch_rows)
