"""Baselines every model is measured against on the same test rows.

* recency: the better of "recent activity" and "recent purchase", direction chosen on train;
* logistic regression on recency, frequency and monetary features (log-scaled);
* BG/NBD (:mod:`propensity.models.bgnbd`), fitted on the latest training snapshot's customers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from propensity.core.sampling import row_weights
from propensity.models.bgnbd import fit_bgnbd

RFM_FEATURES = (
    "days_since_last_event",
    "days_since_last_purchase",
    "purchase_count_365d",
    "event_count_90d",
    "revenue_sum_365d",
)
RECENCY_FEATURES = ("days_since_last_event", "days_since_last_purchase")
# What BG/NBD reads: repeat purchase days, and the age at the last purchase and now.
BGNBD_FEATURES = ("purchase_days", "days_since_first_purchase", "days_since_last_purchase")


def recency_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The better of 'recent activity' and 'recent purchase', direction chosen on train."""
    if train["label"].nunique() < 2:
        raise ValueError("the recency baseline needs both outcomes in the training rows")
    best, best_auc = (RECENCY_FEATURES[0], -1), -1.0
    for feature in RECENCY_FEATURES:
        for sign in (-1, 1):
            score = sign * train[feature].astype(float).fillna(10_000).to_numpy()
            auc = roc_auc_score(train["label"], score)
            if auc > best_auc:
                best, best_auc = (feature, sign), auc
    feature, sign = best
    return sign * test[feature].astype(float).fillna(10_000).to_numpy()


def logreg_baseline(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> np.ndarray:
    """Logistic regression on recency, frequency and monetary features; test probabilities."""
    # A column with no values in the population (no purchases among prospects) says nothing.
    columns = [c for c in RFM_FEATURES if c in train.columns and train[c].notna().any()]
    model = make_pipeline(
        SimpleImputer(strategy="constant", fill_value=10_000, add_indicator=True),
        FunctionTransformer(np.log1p),
        StandardScaler(),
        LogisticRegression(max_iter=1000, random_state=seed),
    )
    # Sampled training rows carry their weights (core.sampling): the fit stays unbiased.
    model.fit(
        train[columns].astype(float).clip(lower=0),
        train["label"],
        logisticregression__sample_weight=row_weights(train),
    )
    return model.predict_proba(test[columns].astype(float).clip(lower=0))[:, 1]


def bgnbd_inputs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD's (x, t_x, T, usable) from the purchase-cycle features; usable: rows with a purchase."""
    days = frame["purchase_days"].astype(float).to_numpy()
    age = frame["days_since_first_purchase"].astype(float).to_numpy()
    since_last = frame["days_since_last_purchase"].astype(float).to_numpy()
    usable = (days > 0) & np.isfinite(age) & np.isfinite(since_last) & (age > 0)
    x = np.where(usable, days - 1, 0.0)
    T = np.where(usable, age, 1.0)
    t_x = np.clip(np.where(usable, age - since_last, 0.0), 0.0, T)
    return x, t_x, T, usable


def bgnbd_baseline(
    train: pd.DataFrame, test: pd.DataFrame, horizon_days: int, occurs: bool = True
) -> np.ndarray | None:
    """BG/NBD probability of a purchase within the horizon (of none, for ``occurs=False``).

    Fitted on the customers of the latest training snapshot. None when the features are not
    in the table or most rows have no purchase to learn a rhythm from (prospects).
    """
    if any(c not in train.columns for c in BGNBD_FEATURES):
        return None
    latest = train[train["as_of"] == train["as_of"].max()]
    x, t_x, T, usable = bgnbd_inputs(latest)
    if usable.mean() < 0.5 or usable.sum() < 50:
        return None
    weights = row_weights(latest)
    model = fit_bgnbd(x[usable], t_x[usable], T[usable], None if weights is None else weights[usable])
    x, t_x, T, usable = bgnbd_inputs(test)
    probability = model.purchase_probability(x, t_x, T, horizon_days)
    # No purchase in the lookback: the chance of a brand-new customer, the lowest there is.
    probability = np.where(usable, probability, 0.0)
    return probability if occurs else 1.0 - probability
