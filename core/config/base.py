"""The shared base of every config model: strict keys, frozen values, errors that name the key."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from propensity.core.errors import UserError, describe_validation_error


class _Strict(BaseModel):
    # Each field's docstring is its description: the config reference in README is generated from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


M = TypeVar("M", bound=BaseModel)


def parse_config(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` against ``model``; a problem becomes a UserError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(source, error)) from None


# Segment and destination names become file and directory names (segment=<name>.csv).
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} '{value}' is listed twice")
        seen.add(value)
    return values
