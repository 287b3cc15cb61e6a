"""De-duplication of the parsed events, and where the parsed events are kept while an ingest runs.

Millions of events are parsed once into a table of a scratch database attached to the
connection (compressed, on disk, read back column by column) rather than an in-memory table
that DuckDB would spill uncompressed. Duplicates are found on ``event_id`` alone, in hash
buckets of about ``bucket_rows`` events each, so the grouping's memory follows the setting,
not the input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from propensity.features.sql import sql_ident


@contextmanager
def insertion_order(con: duckdb.DuckDBPyConnection, preserved: bool) -> Iterator[None]:
    """``preserve_insertion_order`` set for a block (off where the rows carry their own order:
    DuckDB then need not hold results back to keep it), then put back."""
    before = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    con.execute(f"SET preserve_insertion_order = {str(bool(preserved)).lower()}")
    try:
        yield
    finally:
        con.execute(f"SET preserve_insertion_order = {str(bool(before)).lower()}")


def materialise(
    con: duckdb.DuckDBPyConnection, name: str, sql: str, scratch: str | None, ordered: bool = True
) -> None:
    """The rows of ``sql`` as ``name``: a temp table, or with ``scratch`` (an attached database)
    a table there behind a temp view of that name. ``ordered``: the query's row order matters
    (e.g. a CSV's row numbers count rows as read)."""
    if scratch is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {sql_ident(name)} AS {sql}")
        return
    table = f"{sql_ident(scratch)}.{sql_ident(name)}"
    with insertion_order(con, ordered):
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {sql}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {sql_ident(name)} AS SELECT * FROM {table}")


def duplicate_ids(con: duckdb.DuckDBPyConnection, rows: int, bucket_rows: int | None) -> None:
    """The temp table ``duplicate_ids``: every ``event_id`` of more than one valid parsed row,
    found in ``rows / bucket_rows`` passes over hash buckets of the ids (one without a bucket
    size), so that no pass groups more than about ``bucket_rows`` ids."""
    passes = max(1, math.ceil(rows / bucket_rows)) if bucket_rows else 1
    con.execute("CREATE OR REPLACE TEMP TABLE duplicate_ids (event_id VARCHAR)")
    for i in range(passes):
        bucket = f" AND hash(event_id) % {passes} = {i}" if passes > 1 else ""
        con.execute(f"""
            INSERT INTO duplicate_ids
            SELECT event_id FROM parsed_events WHERE reason IS NULL{bucket}
            GROUP BY event_id HAVING count(*) > 1
        """)


def drop_duplicates(con: duckdb.DuckDBPyConnection, content: str, bucket_rows: int | None = None) -> int:
    """The view ``clean_events``: the valid parsed rows, the first copy of each ``event_id`` in
    file order; returns how many later copies carried another payload (``content``)."""
    rows = con.execute("SELECT count(*) FROM parsed_events").fetchone()[0]
    # Duplicates are rare: find them on event_id alone, then drop all but the first in file
    # order. A window over every row and column would hold the whole input in memory.
    duplicate_ids(con, rows, bucket_rows)
    copies = """
        SELECT _source_file, _source_row, event_id, {payload}
               row_number() OVER (PARTITION BY event_id ORDER BY _source_file, _source_row) AS copy
        FROM parsed_events
        WHERE reason IS NULL AND event_id IN (SELECT event_id FROM duplicate_ids)
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE duplicate_rows AS
        SELECT _source_file, _source_row FROM ({copies.format(payload="")}) WHERE copy > 1
    """)
    # A view: the parsed rows are held once, however many steps read the clean events.
    con.execute("""
        CREATE OR REPLACE TEMP VIEW clean_events AS
        SELECT p.* EXCLUDE (reason) RENAME (ts AS timestamp) FROM parsed_events p
        ANTI JOIN duplicate_rows d ON d._source_file = p._source_file AND d._source_row = p._source_row
        WHERE p.reason IS NULL
    """)
    payload = f"md5(concat_ws('|', {content})) AS payload,"
    return int(
        con.execute(f"""
        WITH copies AS ({copies.format(payload=payload)})
        SELECT count(*) FROM copies d JOIN copies f ON f.event_id = d.event_id AND f.copy = 1
        WHERE d.copy > 1 AND d.payload <> f.payload
    """).fetchone()[0]
    )
