"""What the journey queries need of an engine: its SQL dialect, a query to Arrow, a table registered.

The funnel, paths and touchpoint queries are written once (:mod:`.funnel_sql`, :mod:`.paths`,
:mod:`.touches`) with the few dialect differences taken from
:class:`propensity.features.sql.Dialect`; DuckDB runs them through :class:`DuckDBRunner` (on
:mod:`propensity.features.connection`'s Arrow fetch and relation columns), Spark through the
Spark wing's runner (``propensity.features.spark.journeys``). Everything after the query
(counts, rates, intervals, credit) is numpy and identical for both engines.
"""

from __future__ import annotations

from typing import Protocol

import duckdb
import pyarrow as pa

from propensity.features.connection import fetch_arrow, relation_columns
from propensity.features.sql import DUCKDB, Dialect


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
        return relation_columns(self.con, relation)
