"""Explanations with exact TreeSHAP (the values of LightGBM's ``pred_contrib``, computed by
``models.treeshap``): global importance, per-profile factors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from propensity.models.estimator import PropensityModel, lightgbm_array


def global_importance(model: PropensityModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Per feature: its label, total gain, and mean |SHAP| on ``frame`` (log-odds)."""
    contributions = model.contributions(frame)[:, :-1]
    gain = model.booster.feature_importance(importance_type="gain")
    table = pd.DataFrame(
        {
            "feature": model.feature_names,
            "label": [model.feature_labels.get(f, f) for f in model.feature_names],
            "gain": gain,
            "mean_abs_shap": np.abs(contributions).mean(axis=0),
        }
    )
    return table.sort_values("mean_abs_shap", ascending=False).reset_index(drop=True)


def top_factors(model: PropensityModel, frame: pd.DataFrame, k: int = 5) -> list[list[dict]]:
    """Up to ``k`` factors per row, strongest |impact| first (ties: model feature order), each
    {feature, label, value, impact}; a row stops at its first zero impact. ``value`` is the
    feature's value as the model saw it: a float, the category text, or None when missing."""
    matrix = model.matrix(frame)
    rows = lightgbm_array(matrix, model.booster.pandas_categorical)
    index, impact = model.explainer.top_k(rows, k)  # the k strongest per row, selected compiled
    numbers = np.take_along_axis(rows, index.astype(np.intp), axis=1)
    names = list(model.feature_names)
    labels = [model.feature_labels.get(f, f) for f in names]
    categories = {
        j: matrix[f].astype("object").tolist()
        for j, f in enumerate(names)
        if isinstance(matrix[f].dtype, pd.CategoricalDtype)
    }
    out: list[list[dict]] = []
    for i, (features, impacts, values) in enumerate(
        zip(index.tolist(), impact.tolist(), numbers.tolist(), strict=True)
    ):
        factors = []
        for j, number, effect in zip(features, values, impacts, strict=True):
            if effect == 0.0:
                break
            value = categories[j][i] if j in categories else number
            factors.append(
                {
                    "feature": names[j],
                    "label": labels[j],
                    "value": None if pd.isna(value) else (str(value) if j in categories else float(value)),
                    "impact": effect,
                }
            )
        out.append(factors)
    return out
