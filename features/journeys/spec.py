"""Journey step definitions: ``product_view[category=yoga]@2h``, parsed and compiled to SQL.

A step is an event type with optional filters on event columns (``[column=value, ...]``,
``!=`` for "not") and, for funnels, an optional time limit after the previous step
(``@30m``, ``@2h``, ``@7d``). ``category`` is short for ``product_category``. Every value is
quoted through :func:`propensity.features.sql.sql_string`, every column checked against the
events' columns, so a step never injects SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from propensity.core.errors import UserError
from propensity.features.sql import sql_ident, sql_string

ALIASES = {"category": "product_category", "type": "event_type"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STEP = re.compile(
    r"^\s*(?P<name>[^\[\]@]+?)\s*(?:\[(?P<filters>[^\]]*)\])?\s*(?:@(?P<limit>[^@\[\]]+))?\s*$"
)
_FILTER = re.compile(r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>!=|=)\s*(?P<value>.*?)\s*$")


def parse_duration(text: str, what: str = "duration") -> int:
    """``90s``, ``30m``, ``2h``, ``7d``, ``1w`` (or plain seconds) -> seconds (a UserError otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not match or float(match[1]) <= 0:
        raise UserError(f"{what}: expected a positive duration like 30m, 2h or 7d, got {text!r}")
    return round(float(match[1]) * _UNITS[match[2] or "s"])


@dataclass(frozen=True)
class Step:
    """One step: an event type, filters ``(column, op, value)`` and a limit after the previous step."""

    event_type: str
    filters: tuple[tuple[str, str, str], ...] = ()
    limit_seconds: int | None = None
    label: str = ""

    @property
    def name(self) -> str:
        """How the step reads in tables: its text without the limit."""
        return self.label or self.event_type

    def condition(self, columns: set[str] | None = None, quote: str = '"') -> str:
        """The step as a SQL boolean over one event row (columns checked when given)."""
        parts = [f"{sql_ident('event_type', quote)} = {sql_string(self.event_type)}"]
        for column, op, value in self.filters:
            if columns is not None and column not in columns:
                known = ", ".join(sorted(columns))
                raise UserError(
                    f"step '{self.name}': the events have no column '{column}' (they have {known})"
                )
            ident = sql_ident(column, quote)
            if op == "=":
                parts.append(f"{ident} = {sql_string(value)}")
            else:  # "not this value" includes a missing value
                parts.append(f"({ident} IS NULL OR {ident} <> {sql_string(value)})")
        return "(" + " AND ".join(parts) + ")"


def parse_step(text: str) -> Step:
    """One step's text -> :class:`Step` (a UserError naming the step when it does not parse)."""
    match = _STEP.match(text)
    if not match or not match["name"].strip():
        raise UserError(f"step {text.strip()!r}: expected EVENT_TYPE, EVENT_TYPE[column=value] or ...@2h")
    filters = []
    if match["filters"] is not None:
        for part in match["filters"].split(","):
            found = _FILTER.match(part)
            if not found or not found["value"]:
                raise UserError(
                    f"step {text.strip()!r}: filter {part.strip()!r} is not column=value or column!=value"
                )
            column = ALIASES.get(found["column"], found["column"])
            filters.append((column, found["op"], found["value"].strip("'\"")))
    limit = parse_duration(match["limit"], f"step {text.strip()!r} time limit") if match["limit"] else None
    label = match["name"].strip() + (f"[{match['filters'].strip()}]" if match["filters"] else "")
    return Step(match["name"].strip(), tuple(filters), limit, label)


def parse_steps(text: str | list[str]) -> list[Step]:
    """``a > b[col=v] > c@1h`` (or a list of step texts) -> steps in order."""
    parts = list(text.split(">") if isinstance(text, str) else text)
    if not parts or any(not p.strip() for p in parts):
        raise UserError(f"steps: expected 'step > step > ...', got {text!r}")
    return [parse_step(p) for p in parts]


@dataclass(frozen=True)
class Exclusion:
    """An event that breaks a funnel chain when it happens between two steps (0-based, first < last)."""

    step: Step
    first: int
    last: int


def parse_exclusion(text: str, steps: int) -> Exclusion:
    """``remove_from_cart`` (between the first and last step) or ``remove_from_cart:2-3``
    (between steps 2 and 3, counted from 1)."""
    spec, _, between = text.rpartition(":") if re.search(r":\d+-\d+\s*$", text) else (text, "", "")
    step = parse_step(spec)
    if step.limit_seconds is not None:
        raise UserError(f"exclusion {text!r}: an exclusion takes no time limit")
    first, last = 0, steps - 1
    if between:
        a, b = (int(x) for x in between.split("-"))
        if not 1 <= a < b <= steps:
            raise UserError(f"exclusion {text!r}: steps {a}-{b} are not two steps of 1..{steps} in order")
        first, last = a - 1, b - 1
    return Exclusion(step, first, last)
