"""The one exception type for mistakes a user can fix (bad input, bad config, bad flags), and
the one-line wording of a config's validation errors."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import ValidationError


class UserError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits non-zero.

    The message must say what is wrong and where (file, column, rows or config key), so
    that nobody needs a traceback to fix it.
    """


def _quoted(value: Any, limit: int = 200) -> str:
    """``repr(value)`` clipped: an error message never echoes a whole (possibly huge) input."""
    short = reprlib.Repr()  # attributes, not keywords: Python 3.11 has no keyword form
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxdict = short.maxtuple = short.maxset = 6
    short.maxlevel = 3
    text = short.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def describe_validation_error(source: str, error: ValidationError, max_problems: int = 5) -> str:
    """One readable line per problem: ``file: key `a.b`: message (got 'x')``; at most
    ``max_problems`` problems and a few hundred characters of input each."""
    lines = []
    problems = error.errors()
    for item in problems[:max_problems]:
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        suffix = (
            f" (got {_quoted(got)})"
            if item["type"] != "extra_forbidden" and not isinstance(got, dict)
            else ""
        )
        lines.append(f"{source}: key `{key[:200]}`: {message[:300]}{suffix}")
    if len(problems) > max_problems:
        lines.append(f"and {len(problems) - max_problems} more problems")
    return "; ".join(lines)
