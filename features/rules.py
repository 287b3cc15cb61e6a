"""Boolean rules over feature and score columns, parsed and checked, never ``eval``-ed.

Populations (``days_since_last_event <= 45 AND purchase_count_365d = 0``) and segment rules
(``conversion.score >= 80 AND days_since_last_purchase > 60``) are SQL-like expressions. They
are parsed by sqlglot, every node is checked against an allow-list (comparisons, AND/OR/NOT,
IN, BETWEEN, IS NULL, arithmetic, literals, known columns), and rendered back as SQL for the
engine. Anything else (functions, subqueries, unknown columns) is refused with a message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from propensity.core.errors import UserError

ALLOWED_NODES: tuple[type[exp.Expression], ...] = (
    exp.And,
    exp.Or,
    exp.Not,
    exp.Paren,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Neg,
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
)


@dataclass(frozen=True)
class Rule:
    """A checked rule: its source text, the columns it reads and its SQL for an engine."""

    text: str
    columns: frozenset[str]
    tree: exp.Expression

    def sql(self, dialect: str = "duckdb", column_prefix: str = "") -> str:
        tree = self.tree.copy()
        for column in tree.find_all(exp.Column):
            # A qualified name (conversion.score) reads the column conversion__score.
            name = column_name(column).replace(".", "__")
            column.replace(exp.column(name, table=column_prefix or None, quoted=True))
        return tree.sql(dialect=dialect)


def column_name(column: exp.Column) -> str:
    """``conversion.score`` keeps its qualifier; ``days_since_last_purchase`` stays bare."""
    return ".".join(part.name for part in column.parts)


def parse_rule(text: str, allowed_columns: Iterable[str], where: str) -> Rule:
    """Parse ``text`` and check it; ``where`` names the config key for error messages."""
    allowed = set(allowed_columns)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: expected a rule such as `days_since_last_event <= 45`")
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.ParseError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{where}: cannot parse rule `{text}`: {first}") from None
    for node in tree.walk():
        if not isinstance(node, ALLOWED_NODES):
            raise UserError(
                f"{where}: `{node.sql()}` is not allowed in a rule (only comparisons, AND/OR/NOT, "
                f"IN, BETWEEN, IS NULL, arithmetic, literals and column names)"
            )
    columns = {column_name(c) for c in tree.find_all(exp.Column)}
    unknown = sorted(columns - allowed)
    if unknown:
        hint = ", ".join(sorted(allowed)[:8])
        raise UserError(
            f"{where}: unknown column `{unknown[0]}` in rule `{text}` (known columns include {hint}, ...)"
        )
    if not isinstance(tree, exp.Condition) or isinstance(tree, (exp.Column, exp.Literal)):
        raise UserError(f"{where}: rule `{text}` is not a condition")
    return Rule(text=text, columns=frozenset(columns), tree=tree)


def conjuncts(rule: Rule) -> list[Rule]:
    """The parts of a rule joined by top-level AND, each a rule of its own (for "which part
    of the population rule does this profile fail?")."""
    tree = rule.tree.unnest() if isinstance(rule.tree, exp.Paren) else rule.tree
    parts = list(tree.flatten()) if isinstance(tree, exp.And) else [tree]
    return [
        Rule(text=part.sql(), columns=frozenset(column_name(c) for c in part.find_all(exp.Column)), tree=part)
        for part in parts
    ]
