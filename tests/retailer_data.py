"""A store-plus-campaigns retailer: what its till and its mailing tool export, nothing more.

Households shop in store; each trip is one order of several line items (one row per line,
all sharing the order's ``order_id``, timestamp and ``crm_id``). Every four weeks a campaign
mailing (``campaign_received``) reaches a random share of households; some redeem its coupon
(``coupon_redeemed``) within two weeks, more often when they shop often and have a larger
household. A few use the app (``app_open``, the source's name for ``app_launch``).
``profiles.csv`` carries traits: age band, household size, store region, an income band
(sensitive) and ``updated_at``, the day the row was last set (after the data for a few).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

START = dt.date(2024, 1, 1)
REGIONS = np.array(["north", "south", "east", "west"])
AGE_BANDS = np.array(["18-34", "35-54", "55+"])
INCOME_BANDS = np.array(["low", "middle", "high"])
CATEGORIES = np.array(["produce", "dairy", "bakery", "household"])


def _trips(rng: np.random.Generator, households: int, days: int, rate: np.ndarray) -> pd.DataFrame:
    """Store trips per household (Poisson days), one row per trip with its day and time."""
    rows = []
    for h in range(households):
        n = rng.poisson(rate[h] * days)
        day = np.sort(rng.uniform(0, days, n))
        rows.append(pd.DataFrame({"household": h, "day": day}))
    return pd.concat(rows, ignore_index=True)


def _lines(rng: np.random.Generator, trips: pd.DataFrame) -> pd.DataFrame:
    """Each trip's line items (1 to 6), one row each, sharing the trip's order id and time."""
    count = rng.integers(1, 7, len(trips))
    lines = trips.loc[trips.index.repeat(count)].reset_index(names="trip")
    lines["order_id"] = "O" + lines["trip"].astype(str).str.zfill(7)
    lines["product_category"] = CATEGORIES[rng.integers(0, len(CATEGORIES), len(lines))]
    lines["quantity"] = rng.integers(1, 4, len(lines)).astype(float)
    lines["revenue"] = np.round(rng.lognormal(1.6, 0.5, len(lines)) * lines["quantity"], 2)
    lines["sku"] = "S" + rng.integers(0, 500, len(lines)).astype(str)
    lines["event_type"] = "purchase"
    lines["channel"] = "store"
    return lines


def _campaigns(
    rng: np.random.Generator, households: int, days: int, affinity: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mailings every 28 days to 60 % of households, and the coupons redeemed after them."""
    sent, redeemed = [], []
    for wave, day in enumerate(range(10, days, 28)):
        reached = np.flatnonzero(rng.random(households) < 0.6)
        sent.append(pd.DataFrame({"household": reached, "day": day + 0.3, "campaign": f"wave_{wave}"}))
        redeems = reached[rng.random(len(reached)) < affinity[reached]]
        later = day + rng.uniform(1, 14, len(redeems))
        redeemed.append(pd.DataFrame({"household": redeems, "day": later, "campaign": f"wave_{wave}"}))
    mailings = pd.concat(sent, ignore_index=True).assign(event_type="campaign_received", channel="email")
    coupons = pd.concat(redeemed, ignore_index=True).assign(event_type="coupon_redeemed", channel="store")
    return mailings, coupons[coupons["day"] < days]


def retailer(households: int = 800, days: int = 365, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, profiles) of the retailer; events sorted by time, one row per line item."""
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 6, households)
    age = rng.integers(0, len(AGE_BANDS), households)
    rate = rng.gamma(2.0, 1 / 40, households) * (0.6 + 0.2 * size)  # trips a day
    affinity = np.clip(0.03 + 0.08 * size + 0.1 * (age == 2) + 3 * rate, 0, 0.9)
    lines = _lines(rng, _trips(rng, households, days, rate))
    mailings, coupons = _campaigns(rng, households, days, affinity)
    app_users = np.flatnonzero(rng.random(households) < 0.2)
    app = pd.DataFrame(
        {
            "household": rng.choice(app_users, 4 * len(app_users)),
            "day": rng.uniform(0, days, 4 * len(app_users)),
        }
    ).assign(event_type="app_open", channel="mobile_app")
    events = pd.concat([lines, mailings, coupons, app], ignore_index=True)
    stamps = (pd.Timestamp(START) + pd.to_timedelta(events["day"], unit="D")).dt.floor("s")
    events["timestamp"] = stamps.astype("datetime64[us]")  # Spark reads no nanosecond Parquet
    events["crm_id"] = "H" + events["household"].astype(str).str.zfill(5)
    columns = ["timestamp", "event_type", "crm_id", "channel", "order_id", "sku", "product_category"]
    events = events[[*columns, "quantity", "revenue", "campaign"]]
    events = events.sort_values(["timestamp", "crm_id", "order_id", "sku"], kind="stable").reset_index(
        drop=True
    )
    updated = pd.Timestamp(START) + pd.to_timedelta(rng.uniform(-200, days + 60, households), unit="D")
    profiles = pd.DataFrame(
        {
            "crm_id": "H" + pd.Series(range(households)).astype(str).str.zfill(5),
            "age_band": AGE_BANDS[age],
            "household_size": size,
            "store_region": REGIONS[rng.integers(0, len(REGIONS), households)],
            "income_band": INCOME_BANDS[rng.integers(0, len(INCOME_BANDS), households)],
            "updated_at": updated.strftime("%Y-%m-%d"),
        }
    )
    return events, profiles


def write_retailer(
    out: Path, households: int = 800, days: int = 365, seed: int = 3, order_ids: bool = True
) -> Path:
    """``out/events.parquet`` and ``out/profiles.csv`` (without ``order_id`` when not
    ``order_ids``: line items as a naive export gives them); returns ``out``."""
    events, profiles = retailer(households, days, seed)
    out.mkdir(parents=True, exist_ok=True)
    (events if order_ids else events.drop(columns="order_id")).to_parquet(out / "events.parquet", index=False)
    profiles.to_csv(out / "profiles.csv", index=False)
    return out
