"""Realistic purchase-only transactions: what a retailer's order table holds, nothing more.

Each customer is acquired on a day of the period, buys with their own rhythm (gamma gaps
around their own mean: some like clockwork, some erratic), spends around their own typical
order value (lognormal), prefers some categories, and eventually lapses for good after an
exponential lifetime (Pareto/NBD-like, heterogeneous). Only purchases are recorded, keyed by
``crm_id``: no browsing, no e-mail, no hidden state for features to see.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ("home", "garden", "kitchen", "toys")


def purchase_only_events(
    customers: int, days: int = 730, seed: int = 0, start: dt.date = dt.date(2023, 1, 1)
) -> pd.DataFrame:
    """Purchases of ``customers`` customers over ``days`` days: timestamp, event_type
    ('purchase'), crm_id, revenue, product_category, channel; sorted by time."""
    rng = np.random.default_rng(seed)
    acquired = rng.uniform(0, days * 0.75, customers)
    mean_gap = np.exp(rng.normal(np.log(80), 0.6, customers))  # days between purchases
    regularity = np.exp(rng.normal(np.log(3.0), 0.7, customers))  # gamma shape: 1 = Poisson
    # Dropout rate ~ Gamma(2, mean 1 / 400 days), lifetime ~ Exponential(rate).
    lifetime = rng.exponential(1.0 / rng.gamma(2.0, 1 / 800, customers))
    typical_value = np.exp(rng.normal(3.6, 0.5, customers))
    preference = rng.dirichlet(np.full(len(CATEGORIES), 0.6), customers)
    rows: dict[str, list] = {"customer": [], "day": [], "value": [], "category": []}
    for c in range(customers):
        day, end = acquired[c], min(acquired[c] + lifetime[c], days)
        while day < end:
            rows["customer"].append(c)
            rows["day"].append(day)
            rows["value"].append(typical_value[c] * np.exp(rng.normal(0, 0.4)))
            rows["category"].append(CATEGORIES[rng.choice(len(CATEGORIES), p=preference[c])])
            day += rng.gamma(regularity[c], mean_gap[c] / regularity[c])
    frame = pd.DataFrame(rows)
    timestamp = pd.Timestamp(start) + pd.to_timedelta(frame["day"], unit="D")
    events = pd.DataFrame(
        {
            "timestamp": timestamp.dt.floor("s"),
            "event_type": "purchase",
            "crm_id": "C" + frame["customer"].astype(str).str.zfill(6),
            "revenue": frame["value"].round(2),
            "product_category": frame["category"],
            "channel": "web",
        }
    )
    return events.sort_values(["timestamp", "crm_id"]).reset_index(drop=True)


def write_purchase_only(out: Path, customers: int, days: int = 730, seed: int = 0) -> Path:
    """Write :func:`purchase_only_events` as ``out/events.parquet``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    purchase_only_events(customers, days, seed).to_parquet(out / "events.parquet", index=False)
    return out
