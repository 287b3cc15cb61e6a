"""What the journey queries need of an engine: its SQL dialect, a query to Arrow, a table registered.

The funnel, paths and attribution queries are written once (:mod:`.funnel`, :mod:`.paths`,
:mod:`.attribution`) with the few dialect differences taken from :class:`Dialect`; DuckDB
runs them through :class:`DuckDBRunner`, Spark through the Spark wing's runner
(``propensity.features.spark.journeys``). Everything after the query (counts, rates,
intervals, credit) is numpy and identical for both engines.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import duckdb
import pyarrow as pa

from propensity.features.connection import fetch_arrow
from propensity.features.sql import sql_ident


@dataclass(frozen=True)
class Dialect:
    """The SQL text that differs between engines."""

    name: str
    quote: str
    string_type: str
    micros_function: str
    struct_function: str
    join_steps: bool  # funnel steps by a hash join on the unit (DuckDB); else by windows

    def pair(self, a: str, b: str) -> str:
        """A comparable (a, b) pair: ordered by a, then b."""
        return f"{self.struct_function}({a}, {b})"

    def ident(self, name: str) -> str:
        """A quoted identifier."""
        return sql_ident(name, self.quote)

    def micros(self, expr: str) -> str:
        """Microseconds since the epoch of a timestamp expression (BIGINT)."""
        return f"{self.micros_function}({expr})"

    def timestamp(self, value: dt.datetime | dt.date) -> str:
        """A timestamp literal (UTC, naive)."""
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else f"{value} 00:00:00"
        return f"TIMESTAMP '{text}'"


DUCKDB = Dialect("duckdb", '"', "VARCHAR", "epoch_us", "row", join_steps=True)
SPARK = Dialect("spark", "`", "STRING", "unix_micros", "struct", join_steps=False)


class Runner(Protocol):
    """One engine: run a query to an Arrow table, register an Arrow table as a view."""

    dialect: Dialect

    def query(self, sql: str) -> pa.Table: ...

    def register(self, name: str, table: pa.Table) -> None: ...

    def columns(self, relation: str) -> set[str]: ...


class DuckDBRunner:
    """A DuckDB connection as a :class:`Runner`."""

    dialect = DUCKDB

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def query(self, sql: str) -> pa.Table:
        """The query's result as Arrow."""
        return fetch_arrow(self.con, sql)

    def register(self, name: str, table: pa.Table) -> None:
        """``name`` as a view of ``table`` (replacing any earlier one)."""
        self.con.register(name, table)

    def columns(self, relation: str) -> set[str]:
        """The column names of a relation."""
        return {row[0] for row in self.con.execute(f"DESCRIBE {relation}").fetchall()}
