"""Boolean rules over feature and score columns, parsed and checked, never ``eval``-ed.

Populations (``days_since_last_event <= 45 AND purchase_count_365d = 0``) and segment rules
(``conversion.score >= 80 AND days_since_last_purchase > 60``) are SQL-like expressions. They
are parsed by sqlglot, every node is checked against an allow-list (comparisons, AND/OR/NOT,
IN, BETWEEN, IS NULL, arithmetic, literals, known columns), and rendered back as SQL for the
engine. Anything else (functions, subqueries, ``;``, ``*``, unknown columns) is refused with a
message naming the rule's owner (a config key, a segment) before anything runs.

Given the columns' kinds (``number``, ``string``, ``boolean``), a rule is also type-checked:
text is never compared with a number, arithmetic takes numbers, AND/OR/NOT take conditions, and
the whole rule must be a condition. Qualified names (``upsell.score``) read a model's scores.

Arithmetic is NULL-safe on every engine: a division by zero is NULL (DuckDB and Spark would give
``inf`` or ``NaN``, which compare greater than any number and would let people in), and an
arithmetic result that is ``NaN`` or infinite (an overflow) counts as missing, so it never
qualifies. Rules have size and nesting limits, refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

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
ALLOWED_TEXT = "only comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, arithmetic, literals and column names"
ORDERING = (exp.GT, exp.GTE, exp.LT, exp.LTE)
ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div)
# A rule is a hand-written condition: these bounds are far above any real one and keep parsing,
# checking and rendering away from Python's recursion limit.
MAX_RULE_CHARS = 20_000
MAX_RULE_NODES = 5_000
MAX_RULE_DEPTH = 100


@dataclass(frozen=True)
class Rule:
    """A checked rule: its source text, the columns it reads and its SQL for an engine."""

    text: str
    columns: frozenset[str]
    tree: exp.Expression

    def sql(self, dialect: str = "duckdb", column_prefix: str = "") -> str:
        tree = _null_safe(self.tree.copy())
        for column in tree.find_all(exp.Column):
            # A qualified name (conversion.score) reads the column conversion__score.
            name = column_name(column).replace(".", "__")
            column.replace(exp.column(name, table=column_prefix or None, quoted=True))
        # Comments never reach the engine: the rendered SQL is only what was checked.
        return tree.sql(dialect=dialect, comments=False)

    @property
    def qualifiers(self) -> frozenset[str]:
        """The models a rule reads scores of: ``upsell`` for ``upsell.score``."""
        return frozenset(c.split(".", 1)[0] for c in self.columns if "." in c)


def _finite(value: exp.Expression) -> exp.Expression:
    """``value`` when it is a finite number, else NULL: ``v - v = 0`` is false for NaN and
    infinities on DuckDB and Spark alike (neither has one spelling of ``isfinite``)."""
    difference = exp.Sub(this=exp.paren(value.copy()), expression=exp.paren(value.copy()))
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=difference, expression=exp.Literal.number(0)), true=value)])


def _null_safe(tree: exp.Expression) -> exp.Expression:
    """Divisions by zero become NULL, and an arithmetic result that is NaN or infinite (an
    overflow) becomes NULL where it is compared, so it never qualifies anyone. Columns are
    compared as they are: ingest refuses NaN and infinite inputs, so features are finite."""

    def outer(node: exp.Expression) -> exp.Expression | None:
        parent = node.parent
        while isinstance(parent, exp.Paren):
            parent = parent.parent
        return parent

    for division in list(tree.find_all(exp.Div)):
        divisor = division.expression
        division.set("expression", exp.Nullif(this=divisor, expression=exp.Literal.number(0)))
    arithmetic = (*ARITHMETIC, exp.Neg)
    wrap = [n for n in tree.find_all(*arithmetic) if not isinstance(outer(n), arithmetic)]
    for node in wrap:
        if node is tree:
            return _finite(node)
        node.replace(_finite(node.copy()))
    return tree


def _check_size(tree: exp.Expression, text: str, where: str) -> None:
    """Refuse rules past the node or nesting limits (iteratively: no recursion to overflow)."""
    nodes, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_RULE_NODES or depth > MAX_RULE_DEPTH:
            limit = (
                f"{MAX_RULE_NODES} terms" if nodes > MAX_RULE_NODES else f"{MAX_RULE_DEPTH} levels of nesting"
            )
            raise UserError(
                f"{where}: rule `{_clip(text)}` is too large (over {limit}; an AND/OR chain nests one "
                "level per term): split it, or use IN (...) for long lists"
            )
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _clip(text: str, limit: int = 200) -> str:
    """At most ``limit`` characters of a user's text, for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def column_name(column: exp.Column) -> str:
    """``conversion.score`` keeps its qualifier; ``days_since_last_purchase`` stays bare."""
    return ".".join(part.name for part in column.parts)


def _refusal(node: exp.Expression) -> str:
    if isinstance(node, exp.Func):
        return f"function calls such as `{node.sql()}` are not allowed in a rule"
    if isinstance(node, (exp.Subquery, exp.Select, exp.Query)):
        return f"subqueries such as `{node.sql()}` are not allowed in a rule"
    if isinstance(node, exp.Star):
        return "`*` is not allowed in a rule"
    return f"`{node.sql()}` is not allowed in a rule"


def parse_rule(text: str, allowed_columns: Iterable[str] | Mapping[str, str], where: str) -> Rule:
    """Parse ``text`` and check it; ``where`` names the owner (config key, segment) in errors.

    ``allowed_columns``: column names, or a mapping of name -> kind (``number``, ``string``,
    ``boolean``), in which case the rule is type-checked too. Names with a dot
    (``upsell.score``) are a model's score columns. Returns the checked :class:`Rule`;
    anything outside the allow-list raises :class:`UserError`.
    """
    kinds = dict(allowed_columns) if isinstance(allowed_columns, Mapping) else None
    allowed = set(kinds) if kinds is not None else set(allowed_columns)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: expected a rule such as `days_since_last_event <= 45`")
    if len(text) > MAX_RULE_CHARS:
        raise UserError(f"{where}: rule `{_clip(text)}` is longer than {MAX_RULE_CHARS:,} characters")
    try:
        return _parse_checked(text, kinds, allowed, where)
    except RecursionError:
        raise UserError(f"{where}: rule `{_clip(text)}` nests too deeply to check; simplify it") from None


def _parse_checked(text: str, kinds: dict[str, str] | None, allowed: set[str], where: str) -> Rule:
    try:
        tokens = sqlglot.tokenize(text, read="duckdb")
        if any(t.token_type == TokenType.SEMICOLON for t in tokens):
            raise UserError(f"{where}: a rule is one expression; `;` is not allowed in rule `{text}`")
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.SqlglotError as error:
        first = str(error).splitlines()[0][:300]
        raise UserError(f"{where}: cannot parse rule `{_clip(text)}`: {first}") from None
    _check_size(tree, text, where)
    for node in tree.walk():
        if not isinstance(node, ALLOWED_NODES):
            raise UserError(f"{where}: {_refusal(node)} ({ALLOWED_TEXT}); rule `{text}`")
    columns = {column_name(c) for c in tree.find_all(exp.Column)}
    for name in sorted(columns - allowed):
        raise UserError(f"{where}: {_unknown(name, allowed)} in rule `{text}`")
    if kinds is not None:
        if _Kinds(kinds, where, text).of(tree) != "boolean":
            raise UserError(f"{where}: rule `{text}` is not a condition (it must be true or false)")
    elif not isinstance(tree, exp.Condition) or isinstance(tree, (exp.Column, exp.Literal)):
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


def _unknown(name: str, allowed: set[str]) -> str:
    models = sorted({c.split(".", 1)[0] for c in allowed if "." in c})
    if "." in name:
        model, _, column = name.partition(".")
        if model not in models:
            return f"unknown model `{model}` in `{name}` (models: {', '.join(models) or 'none'})"
        offered = sorted(c.split(".", 1)[1] for c in allowed if c.startswith(model + "."))
        return f"unknown score column `{column}` in `{name}` (scores give {', '.join(offered)})"
    hint = ", ".join(sorted(c for c in allowed if "." not in c)[:8])
    return f"unknown column `{name}` (known columns include {hint}, ...)"


@dataclass(frozen=True)
class _Kinds:
    """The kinds of value a rule's expressions give (number, string, boolean or null), with
    every operand checked on the way (``kinds``: the columns'; ``where``, ``text``: the rule,
    for the error)."""

    kinds: Mapping[str, str]
    where: str
    text: str

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.where}: {message} in rule `{self.text}`")

    @staticmethod
    def describe(n: exp.Expression, k: str) -> str:
        return f"{'text' if k == 'string' else 'a ' + k} `{n.sql(comments=False)}`"

    def of(self, node: exp.Expression) -> str:
        """The kind of value ``node`` gives, checking its operands."""
        if isinstance(node, exp.Column):
            return self.kinds[column_name(node)]
        if isinstance(node, exp.Literal):
            return "string" if node.is_string else "number"
        if isinstance(node, exp.Boolean):
            return "boolean"
        if isinstance(node, exp.Null):
            return "null"
        if isinstance(node, exp.Paren):
            return self.of(node.this)
        if isinstance(node, (exp.Neg, *ARITHMETIC)):
            for operand in (node.this, node.args.get("expression")):
                if operand is not None and self.of(operand) not in ("number", "null"):
                    raise self.fail(
                        f"arithmetic needs numbers, not {self.describe(operand, self.of(operand))}"
                    )
            return "number"
        if isinstance(node, (exp.And, exp.Or, exp.Not)):
            for operand in (node.this, node.args.get("expression")):
                if operand is not None and self.of(operand) not in ("boolean", "null"):
                    raise self.fail(f"{self.describe(operand, self.of(operand))} is not a condition")
            return "boolean"
        return self.condition(node)

    def condition(self, node: exp.Expression) -> str:
        """The kind of a comparison, IS, IN or BETWEEN (boolean), checking what it compares."""
        if isinstance(node, (exp.EQ, exp.NEQ, *ORDERING)):
            self.comparable(node, node.this, node.expression, isinstance(node, ORDERING))
            return "boolean"
        if isinstance(node, exp.Is):
            subject = self.of(node.this)
            if isinstance(node.expression, exp.Boolean) and subject != "boolean":
                raise self.fail(f"{self.describe(node.this, subject)} is not a condition")
            return "boolean"
        if isinstance(node, exp.In):
            if any(isinstance(item, exp.Null) for item in node.expressions):
                raise self.fail("NULL in an IN list never matches; test for missing values with IS NULL")
            for item in node.expressions:
                self.comparable(node, node.this, item, ordered=False)
            return "boolean"
        if isinstance(node, exp.Between):
            self.comparable(node, node.this, node.args["low"], ordered=True)
            self.comparable(node, node.this, node.args["high"], ordered=True)
            return "boolean"
        raise self.fail(_refusal(node))  # unreachable: every allowed node is handled above

    def comparable(
        self, node: exp.Expression, left: exp.Expression, right: exp.Expression, ordered: bool
    ) -> None:
        """Refuse comparing ``left`` with ``right`` in ``node`` unless they are of one kind
        (numbers when ``ordered``) and neither is NULL."""
        a, b = self.of(left), self.of(right)
        if "null" in (a, b):
            # x = NULL is never true: a rule written so would silently qualify nobody.
            raise self.fail(
                f"`{node.sql(comments=False)}` is never true; test for missing values with IS NULL"
            )
        if a != b:
            raise self.fail(f"cannot compare {self.describe(left, a)} with {self.describe(right, b)}")
        if ordered and a != "number":
            what = "text" if a == "string" else f"{a} values"
            raise self.fail(
                f"`{node.sql(comments=False)}` orders {what}, which compares only with =, <> or IN"
            )
