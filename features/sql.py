"""SQL text shared by both engines: literal and identifier quoting, and the one :class:`Dialect`
(with :data:`DUCKDB` and :data:`SPARK`) holding every spelling that differs between them.

Column names and values come from user files, so every piece of user text that enters a query
passes through one of these functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass


def sql_string(value: str) -> str:
    """Quote a Python string as a SQL literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_ident(name: str, quote: str = '"') -> str:
    """Quote an identifier (column names come from user files): ``"a""b"``, or with backticks."""
    return quote + str(name).replace(quote, quote * 2) + quote


@dataclass(frozen=True)
class Dialect:
    """The SQL spellings that differ between engines; the feature compiler
    (:mod:`propensity.features.build.sql_compiler`), the labels and the journey queries
    (:mod:`propensity.features.journeys`) are written once against it."""

    name: str
    quote: str  # around identifiers
    string_type: str
    day_of_timestamp: str  # format with {col}
    date_of_day: str  # format with {col}
    micros_function: str
    struct_function: str
    join_steps: bool  # funnel steps by a hash join on the unit (DuckDB); else by windows

    def ident(self, name: str) -> str:
        """An identifier quoted for this engine."""
        return sql_ident(name, self.quote)

    def day(self, column: str) -> str:
        """SQL for the day number (days since 1970-01-01) of a timestamp column."""
        return self.day_of_timestamp.format(col=column)

    def date(self, column: str) -> str:
        """SQL for the date of a day-number column."""
        return self.date_of_day.format(col=column)

    def pair(self, a: str, b: str) -> str:
        """A comparable (a, b) pair: ordered by a, then b."""
        return f"{self.struct_function}({a}, {b})"

    def micros(self, expr: str) -> str:
        """Microseconds since the epoch of a timestamp expression (BIGINT)."""
        return f"{self.micros_function}({expr})"

    def timestamp(self, value: dt.datetime | dt.date) -> str:
        """A timestamp literal (UTC, naive)."""
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else f"{value} 00:00:00"
        return f"TIMESTAMP '{text}'"


DUCKDB = Dialect(
    name="duckdb",
    quote='"',
    string_type="VARCHAR",
    day_of_timestamp="CAST(date_diff('day', DATE '1970-01-01', CAST({col} AS DATE)) AS INTEGER)",
    date_of_day="(DATE '1970-01-01' + CAST({col} AS INTEGER))",
    micros_function="epoch_us",
    struct_function="row",
    join_steps=True,
)
SPARK = Dialect(
    name="spark",
    quote="`",
    string_type="STRING",
    day_of_timestamp="datediff(to_date({col}), DATE'1970-01-01')",
    date_of_day="date_add(DATE'1970-01-01', {col})",
    micros_function="unix_micros",
    struct_function="struct",
    join_steps=False,
)


# The kinds of column a rule can compare (see features.build.rules): every other type is unusable.
COLUMN_KINDS: tuple[str, ...] = ("number", "string", "boolean")
_NUMBER_TYPES = ("TINYINT", "SMALLINT", "INT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "REAL")


def column_kind(type_name: str) -> str | None:
    """``number`` / ``string`` / ``boolean`` for a column type as DuckDB describes it
    (``VARCHAR``, ``UBIGINT``, ``DECIMAL(18,2)``) or as Spark's ``simpleString`` names it
    (``string``, ``int``, ``decimal(18,2)``); None for types rules cannot use."""
    upper = type_name.upper()
    if upper in ("VARCHAR", "STRING", "TEXT") or upper.startswith("VARCHAR"):
        return "string"
    if upper in ("BOOLEAN", "BOOL"):
        return "boolean"
    if upper.lstrip("U") in _NUMBER_TYPES or upper.startswith("DECIMAL"):
        return "number"
    return None


def usable_kinds(columns: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The columns rules can compare, name -> kind (:func:`column_kind`), from (name, type) pairs
    as either engine describes a relation; ``profile_id`` is the key, never a rule's operand."""
    kinds = {name: column_kind(type_name) for name, type_name in columns}
    return {name: kind for name, kind in kinds.items() if kind is not None and name != "profile_id"}
