"""SQL text shared by both engines: literal and identifier quoting.

Column names and values come from user files, so every piece of user text that enters a query
passes through one of these functions.
"""

from __future__ import annotations


def sql_string(value: str) -> str:
    """Quote a Python string as a SQL literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_ident(name: str, quote: str = '"') -> str:
    """Quote an identifier (column names come from user files): ``"a""b"``, or with backticks."""
    return quote + str(name).replace(quote, quote * 2) + quote


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
