"""Explanations with TreeSHAP (LightGBM ``pred_contrib``): global importance, per-profile factors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from propensity.models.estimator import PropensityModel


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
    """Up to ``k`` factors per row, strongest |impact| first: feature, label, value, impact."""
    contributions = model.contributions(frame)[:, :-1]
    values = model.matrix(frame)
    k = min(k, contributions.shape[1])
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    names = np.asarray(model.feature_names)
    out: list[list[dict]] = []
    for i in range(len(frame)):
        factors = []
        for j in order[i]:
            impact = float(contributions[i, j])
            if impact == 0.0:
                break
            value = values.iat[i, j]
            factors.append(
                {
                    "feature": str(names[j]),
                    "label": model.feature_labels.get(names[j], names[j]),
                    "value": None
                    if pd.isna(value)
                    else (str(value) if isinstance(value, str) else float(value)),
                    "impact": impact,
                }
            )
        out.append(factors)
    return out
