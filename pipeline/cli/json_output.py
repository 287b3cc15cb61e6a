"""``--json``: a command's typed result as one JSON object on stdout, for scripts.

The jobs return dataclasses (figures, paths, versions, counts, run ids); :func:`to_jsonable`
turns any of them into plain JSON values without scraping printed text: dataclass fields and
public properties (``size``, ``alert`` ...), tables as lists of records, dates as ISO strings,
paths as strings, NumPy scalars as numbers and NaN as ``null``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout (the run's figures, paths, versions) and nothing else; "
        'errors as {"error": ...} on stdout too, still with exit code 2.',
    ),
]


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-ready dicts, lists, strings, numbers, booleans and None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return _library_value(value)


def _dataclass(value: Any) -> dict[str, Any]:
    """Fields, then the public properties its class defines (derived figures such as ``size``)."""
    out = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    for name in dir(type(value)):
        if not name.startswith("_") and isinstance(getattr(type(value), name), property):
            out[name] = to_jsonable(getattr(value, name))
    return out


def _library_value(value: Any) -> Any:
    """pandas tables and NumPy values, imported only when one is met."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return [to_jsonable(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return to_jsonable(value.to_dict())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_json(payload: Any) -> None:
    """One JSON object, one line, on stdout: nothing else goes there under ``--json``."""
    sys.stdout.write(json.dumps(to_jsonable(payload), sort_keys=False, allow_nan=False) + "\n")
    sys.stdout.flush()
