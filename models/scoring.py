"""Scoring one batch of profiles: calibrated probability, 0-100 score, bucket, top factors.

A batch is a feature table (the model's columns plus ``profile_id``); the result is an Arrow
table in the score-table contract of ARCHITECTURE.md, less the ``percentile``, which needs
the whole scored population and is added by the job once every batch is written.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from propensity.core.score_table import FACTOR_TYPE, batch_schema
from propensity.models.estimator import PropensityModel
from propensity.models.evaluate import buckets, scores_from_reference


def bucket_thresholds(model: PropensityModel) -> tuple[int, int]:
    """(medium, high) score thresholds the model was registered with."""
    configured = model.metadata.get("buckets") or {"medium": 40, "high": 70}
    return int(configured["medium"]), int(configured["high"])


def _display_values(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Feature values as short text: numbers rounded to 4 decimals (NaN as missing), text as it is."""
    if (
        pa.types.is_dictionary(values.type)
        or pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
    ):
        return pc.cast(values, pa.string())
    numbers = pc.cast(values, pa.float64())
    numbers = pc.if_else(pc.is_nan(numbers), pa.scalar(None, pa.float64()), numbers)
    return pc.cast(pc.round(numbers, 4), pa.string())


def _factor_values(table: pa.Table, names: list[str], rows: np.ndarray, columns: np.ndarray) -> pa.Array:
    """The display value of each (row, feature) factor: one take per feature that appears, never a
    display column for every feature and row."""
    if len(columns) == 0:
        return pa.array([], type=pa.string())
    order = np.argsort(columns, kind="stable")
    grouped = columns[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    stops = np.r_[starts[1:], len(order)]
    pieces = [
        _display_values(table.column(names[grouped[a]]).take(pa.array(rows[order[a:b]])))
        for a, b in zip(starts, stops, strict=True)
    ]
    in_column_order = pa.chunked_array(pieces, type=pa.string()).combine_chunks()
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return in_column_order.take(pa.array(back))


def _is_number(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type reaches the model as its own float64 value."""
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


def factor_lists(
    model: PropensityModel,
    table: pa.Table,
    indices: np.ndarray,
    impacts: np.ndarray,
    values: np.ndarray | None = None,
) -> pa.Array:
    """Per row, the factors of ``indices``/``impacts`` (strongest |impact| first, as
    ``top_contributions`` gives them) with labels and the row's values; no-impact features left out.
    ``values`` (n, k), when given, holds each factor's value as the model saw it (float64, NaN
    when missing): numeric features are shown from it, with no lookup in ``table``."""
    n = table.num_rows
    k = indices.shape[1] if indices.ndim == 2 else 0
    if k == 0 or n == 0:
        return pa.array([[] for _ in range(n)], type=pa.list_(FACTOR_TYPE))
    keep = (impacts != 0.0).ravel()
    rows = np.repeat(np.arange(n), k)[keep]
    columns = pa.array(indices.ravel()[keep].astype(np.int32))
    names = list(model.feature_names)
    labels = [model.feature_labels.get(f, f) for f in names]
    structs = pa.StructArray.from_arrays(
        [
            # Each name and label once; the factors take them by index (no Python string a factor).
            pa.array(names, type=pa.string()).take(columns),
            pa.array(labels, type=pa.string()).take(columns),
            _shown_values(model, table, rows, columns.to_numpy(), values, keep),
            pa.array(impacts.ravel()[keep], type=pa.float64()),
        ],
        fields=list(FACTOR_TYPE),
    )
    offsets = np.concatenate([[0], np.cumsum(keep.reshape(n, k).sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), structs)


def _shown_values(
    model: PropensityModel,
    table: pa.Table,
    rows: np.ndarray,
    columns: np.ndarray,
    values: np.ndarray | None,
    keep: np.ndarray,
) -> pa.Array:
    """Each kept factor's display value: numeric features from ``values`` in one rounding and
    cast, the others (categoricals, text) from ``table`` (:func:`_factor_values`)."""
    names = list(model.feature_names)
    if values is None:
        return _factor_values(table, names, rows, columns)
    categorical = getattr(model, "categories", {}) or {}
    numeric = np.array(
        [name not in categorical and _is_number(table.column(name).type) for name in names], dtype=bool
    )
    numbers = numeric[columns]
    shown = _display_values(pa.array(values.ravel()[keep][numbers], type=pa.float64(), from_pandas=True))
    if numbers.all():
        return shown
    others = ~numbers
    texts = _factor_values(table, names, rows[others], columns[others])
    order = np.concatenate([np.flatnonzero(numbers), np.flatnonzero(others)])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return pa.concat_arrays([shown, texts]).take(pa.array(back))


def as_arrow(batch: pa.Table | pa.RecordBatch | pd.DataFrame) -> pa.Table:
    """A feature batch as an Arrow table (what DuckDB and Spark hand over; a DataFrame is converted)."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    return pa.Table.from_pandas(batch, preserve_index=False)


def score_batch(
    model: PropensityModel,
    batch: pa.Table | pa.RecordBatch | pd.DataFrame,
    *,
    model_name: str,
    model_version: str,
    as_of: dt.date,
    factors: int,
    scored_at: dt.datetime,
    identity_columns: list[str] | None = None,
) -> pa.Table:
    """Score one batch of profiles (rows of the feature table at ``as_of``, Arrow or pandas).

    Returns ``profile_id``, ``model``, ``model_version``, ``as_of``, ``probability``,
    ``score`` (0-100 against the model's reference distribution), ``bucket``, ``factors``,
    ``scored_at`` and the ``identity_columns`` carried from ``batch``. An uplift model adds
    ``uplift`` after ``bucket``; its ``probability`` is the outcome's if contacted and its
    ``factors`` explain the uplift (``models.uplift``).
    """
    table = as_arrow(batch)
    k = min(factors, len(model.feature_names))
    uplift = values = None
    if is_uplift(model):  # probability if contacted, the uplift, and the uplift's factors
        probability, uplift, indices, impacts = model.predict_and_explain(table, k)
    elif hasattr(model, "predict_explain_values"):  # the factors' values from the model's rows
        probability, indices, impacts, values = model.predict_explain_values(table, k)
    else:
        probability, indices, impacts = model.predict_and_explain(table, k)
    score = scores_from_reference(probability, np.asarray(model.metadata["reference_probabilities"]))
    medium, high = bucket_thresholds(model)
    n = table.num_rows
    columns = [
        pc.cast(table.column("profile_id"), pa.string()),
        pa.array([model_name] * n, type=pa.string()),
        pa.array([str(model_version)] * n, type=pa.string()),
        pa.array([as_of] * n, type=pa.date32()),
        pa.array(probability, type=pa.float64()),
        pa.array(score, type=pa.int16()),
        pa.array(buckets(score, medium, high), type=pa.string()),
        *([] if uplift is None else [pa.array(uplift, type=pa.float64())]),
        factor_lists(model, table, indices, impacts, values),
        pa.array([scored_at] * n, type=pa.timestamp("us", tz="UTC")),
        *(pc.cast(table.column(column), pa.string()) for column in identity_columns or []),
    ]
    # The contract's schema, in its order (core.score_table): one declaration for both engines.
    return pa.Table.from_arrays(
        columns, schema=batch_schema(identity_columns or [], uplift=uplift is not None)
    )


def is_uplift(model: object) -> bool:
    """Whether ``model`` scores an ``uplift`` column (an :class:`~propensity.models.uplift.UpliftModel`)."""
    return bool(getattr(model, "predicts_uplift", False))


def unused_feature_types(model: PropensityModel) -> dict[str, str]:
    """The model's features no tree splits on, each with the type of the NULL that stands in for
    it ("string" for a categorical, else "double": DuckDB and Spark SQL both read them). Both
    engines build only the other features: these cannot change a score or a factor, and a
    trained model often reads a fifth of the registry, so its feature build is several times
    faster."""
    used = set(model.used_features())
    return {
        name: "string" if name in model.categories else "double"
        for name in model.feature_names
        if name not in used
    }
