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

from propensity.models.estimator import PropensityModel
from propensity.models.evaluate import buckets, scores_from_reference

FACTOR_TYPE = pa.struct(
    [
        pa.field("feature", pa.string()),
        pa.field("label", pa.string()),
        pa.field("value", pa.string()),  # the profile's value as shown to a person ("12", "gold")
        pa.field("impact", pa.float64()),  # log-odds contribution (exact TreeSHAP)
    ]
)


def bucket_thresholds(model: PropensityModel) -> tuple[int, int]:
    """(medium, high) score thresholds the model was registered with."""
    configured = model.metadata.get("buckets") or {"medium": 40, "high": 70}
    return int(configured["medium"]), int(configured["high"])


def _display_values(column: pd.Series) -> pa.Array:
    """A feature column as short text: numbers rounded to 4 decimals, categories as they are."""
    if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object:
        return pa.array(column.astype("object").where(column.notna(), None), type=pa.string())
    values = pa.array(column.to_numpy(dtype=np.float64), from_pandas=True)
    return pc.cast(pc.round(values, 4), pa.string())


def factor_lists(model: PropensityModel, matrix: pd.DataFrame, k: int) -> pa.Array:
    """Per row, up to ``k`` factors strongest |impact| first; features with no impact left out."""
    n = len(matrix)
    k = min(k, len(model.feature_names))
    if k <= 0 or n == 0:
        return pa.array([[] for _ in range(n)], type=pa.list_(FACTOR_TYPE))
    indices, impacts = model.top_contributions(matrix, k)
    keep = impacts != 0.0
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    columns = indices.ravel()[keep.ravel()].astype(np.int64)
    names = np.asarray(model.feature_names, dtype=object)
    labels = np.asarray([model.feature_labels.get(f, f) for f in model.feature_names], dtype=object)
    # One display column per feature, then a take per factor: no Python loop over rows.
    display = [_display_values(matrix[name]) for name in model.feature_names]
    flat_values = pa.chunked_array(display).combine_chunks()
    value_index = columns * n + rows
    structs = pa.StructArray.from_arrays(
        [
            pa.array(names[columns], type=pa.string()),
            pa.array(labels[columns], type=pa.string()),
            flat_values.take(pa.array(value_index)),
            pa.array(impacts.ravel()[keep.ravel()], type=pa.float64()),
        ],
        fields=list(FACTOR_TYPE),
    )
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), structs)


def score_batch(
    model: PropensityModel,
    frame: pd.DataFrame,
    *,
    model_name: str,
    model_version: str,
    as_of: dt.date,
    factors: int,
    scored_at: dt.datetime,
    identity_columns: list[str] | None = None,
) -> pa.Table:
    """Score one batch of profiles (rows of the feature table at ``as_of``).

    Returns ``profile_id``, ``model``, ``model_version``, ``as_of``, ``probability``,
    ``score`` (0-100 against the model's reference distribution), ``bucket``, ``factors``,
    ``scored_at`` and the ``identity_columns`` carried from ``frame``.
    """
    matrix = model.matrix(frame)
    probability = model.predict_proba(frame)
    score = scores_from_reference(probability, np.asarray(model.metadata["reference_probabilities"]))
    medium, high = bucket_thresholds(model)
    n = len(frame)
    columns: dict[str, pa.Array] = {
        "profile_id": pa.array(frame["profile_id"].astype(str).to_numpy(), type=pa.string()),
        "model": pa.array([model_name] * n, type=pa.string()),
        "model_version": pa.array([str(model_version)] * n, type=pa.string()),
        "as_of": pa.array([as_of] * n, type=pa.date32()),
        "probability": pa.array(probability, type=pa.float64()),
        "score": pa.array(score, type=pa.int16()),
        "bucket": pa.array(buckets(score, medium, high), type=pa.string()),
        "factors": factor_lists(model, matrix, factors),
        "scored_at": pa.array([scored_at] * n, type=pa.timestamp("us", tz="UTC")),
    }
    for column in identity_columns or []:
        columns[column] = pa.array(frame[column].astype("object").where(frame[column].notna(), None))
    return pa.table(columns)
