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
