"""What ``benchmarks/features.py`` measures our feature build against, on the same 35 core
features: one DuckDB query written by hand for exactly these features, and plain pandas."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

CORE = [
    "event_count_7d",
    "event_count_30d",
    "event_count_90d",
    "active_days_30d",
    "page_view_count_7d",
    "page_view_count_30d",
    "product_view_count_7d",
    "product_view_count_30d",
    "add_to_cart_count_7d",
    "add_to_cart_count_30d",
    "checkout_count_30d",
    "purchase_count_30d",
    "purchase_count_90d",
    "purchase_count_365d",
    "email_open_count_30d",
    "email_click_count_30d",
    "store_visit_count_90d",
    "app_launch_count_30d",
    "days_since_first_event",
    "days_since_last_event",
    "days_since_last_purchase",
    "days_since_last_add_to_cart",
    "revenue_sum_30d",
    "revenue_sum_90d",
    "revenue_sum_365d",
    "average_order_value_365d",
    "max_order_value_365d",
    "funnel_stage_30d",
    "view_to_cart_ratio_30d",
    "cart_to_purchase_ratio_90d",
    "channel_share_web_90d",
    "channel_share_mobile_app_90d",
    "channel_share_email_90d",
    "channel_share_store_90d",
    "events_trend_7d_vs_prior_30d",
]


def handwritten_sql(as_of: dt.date, lookback: int) -> str:
    """What an engineer would write by hand for CORE: one scan, conditional aggregates."""

    def n(cond: str) -> str:
        return f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END)"

    t = lambda name: f"event_type = '{name}'"  # noqa: E731
    return f"""
    WITH e AS (
        SELECT profile_id, event_type, channel, revenue,
               CAST(timestamp AS DATE) AS day,
               date_diff('day', CAST(timestamp AS DATE), DATE '{as_of}') AS ago
        FROM events
        WHERE timestamp < TIMESTAMP '{as_of}' AND timestamp >= TIMESTAMP '{as_of}' - INTERVAL {lookback} DAY
    ), a AS (
        SELECT profile_id,
          {n("ago <= 7")} AS event_count_7d, {n("ago <= 30")} AS event_count_30d,
          {n("ago <= 90")} AS event_count_90d,
          count(DISTINCT CASE WHEN ago <= 30 THEN day END) AS active_days_30d,
          {n("ago <= 7 AND " + t("page_view"))} AS page_view_count_7d,
          {n("ago <= 30 AND " + t("page_view"))} AS page_view_count_30d,
          {n("ago <= 7 AND " + t("product_view"))} AS product_view_count_7d,
          {n("ago <= 30 AND " + t("product_view"))} AS product_view_count_30d,
          {n("ago <= 7 AND " + t("add_to_cart"))} AS add_to_cart_count_7d,
          {n("ago <= 30 AND " + t("add_to_cart"))} AS add_to_cart_count_30d,
          {n("ago <= 30 AND " + t("checkout"))} AS checkout_count_30d,
          {n("ago <= 30 AND " + t("purchase"))} AS purchase_count_30d,
          {n("ago <= 90 AND " + t("purchase"))} AS purchase_count_90d,
          {n("ago <= 365 AND " + t("purchase"))} AS purchase_count_365d,
          {n("ago <= 30 AND " + t("email_open"))} AS email_open_count_30d,
          {n("ago <= 30 AND " + t("email_click"))} AS email_click_count_30d,
          {n("ago <= 90 AND " + t("store_visit"))} AS store_visit_count_90d,
          {n("ago <= 30 AND " + t("app_launch"))} AS app_launch_count_30d,
          max(ago) AS days_since_first_event, min(ago) AS days_since_last_event,
          min(CASE WHEN {t("purchase")} THEN ago END) AS days_since_last_purchase,
          min(CASE WHEN {t("add_to_cart")} THEN ago END) AS days_since_last_add_to_cart,
          coalesce(sum(CASE WHEN ago <= 30 AND {t("purchase")} THEN revenue END), 0) AS revenue_sum_30d,
          coalesce(sum(CASE WHEN ago <= 90 AND {t("purchase")} THEN revenue END), 0) AS revenue_sum_90d,
          coalesce(sum(CASE WHEN ago <= 365 AND {t("purchase")} THEN revenue END), 0) AS revenue_sum_365d,
          max(CASE WHEN ago <= 365 AND {t("purchase")} THEN revenue END) AS max_order_value_365d,
          {n("ago <= 90 AND " + t("add_to_cart"))} AS add_to_cart_count_90d,
          {n("ago <= 90 AND channel = 'web'")} AS web_90,
          {n("ago <= 90 AND channel = 'mobile_app'")} AS app_90,
          {n("ago <= 90 AND channel = 'email'")} AS email_90,
          {n("ago <= 90 AND channel = 'store'")} AS store_90,
          {n("ago > 7 AND ago <= 37")} AS prior_30
        FROM e GROUP BY profile_id
    )
    SELECT profile_id, event_count_7d, event_count_30d, event_count_90d, active_days_30d,
           page_view_count_7d, page_view_count_30d, product_view_count_7d, product_view_count_30d,
           add_to_cart_count_7d, add_to_cart_count_30d, checkout_count_30d,
           purchase_count_30d, purchase_count_90d, purchase_count_365d,
           email_open_count_30d, email_click_count_30d, store_visit_count_90d, app_launch_count_30d,
           days_since_first_event, days_since_last_event, days_since_last_purchase,
           days_since_last_add_to_cart,
           revenue_sum_30d, revenue_sum_90d, revenue_sum_365d,
           CASE WHEN purchase_count_365d > 0 THEN revenue_sum_365d / purchase_count_365d END
             AS average_order_value_365d,
           max_order_value_365d,
           CASE WHEN purchase_count_30d > 0 THEN 4 WHEN checkout_count_30d > 0 THEN 3
                WHEN add_to_cart_count_30d > 0 THEN 2 WHEN product_view_count_30d > 0 THEN 1 ELSE 0 END
             AS funnel_stage_30d,
           CASE WHEN product_view_count_30d > 0 THEN add_to_cart_count_30d / product_view_count_30d END
             AS view_to_cart_ratio_30d,
           CASE WHEN add_to_cart_count_90d > 0 THEN purchase_count_90d / add_to_cart_count_90d END
             AS cart_to_purchase_ratio_90d,
           CASE WHEN event_count_90d > 0 THEN web_90 / event_count_90d END AS channel_share_web_90d,
           CASE WHEN event_count_90d > 0 THEN app_90 / event_count_90d END AS channel_share_mobile_app_90d,
           CASE WHEN event_count_90d > 0 THEN email_90 / event_count_90d END AS channel_share_email_90d,
           CASE WHEN event_count_90d > 0 THEN store_90 / event_count_90d END AS channel_share_store_90d,
           (event_count_7d / 7 + 0.05) / (prior_30 / 30 + 0.05) AS events_trend_7d_vs_prior_30d
    FROM a
    """


def pandas_features(events_path: Path, as_of: dt.date, lookback: int) -> pd.DataFrame:
    """CORE in plain pandas: read, one indicator frame, group-bys."""
    frame = pd.read_parquet(
        events_path, columns=["profile_id", "timestamp", "event_type", "channel", "revenue"]
    )
    as_of_ts = pd.Timestamp(as_of)
    frame = frame[
        (frame["timestamp"] < as_of_ts) & (frame["timestamp"] >= as_of_ts - pd.Timedelta(days=lookback))
    ]
    day = frame["timestamp"].dt.floor("D")
    ago = (as_of_ts - day).dt.days.to_numpy()
    et = frame["event_type"].to_numpy()
    ch = frame["channel"].to_numpy()
    revenue = frame["revenue"].fillna(0).to_numpy()
    is_ = lambda name: et == name  # noqa: E731
    cols = {
        "event_count_7d": ago <= 7,
        "event_count_30d": ago <= 30,
        "event_count_90d": ago <= 90,
        "page_view_count_7d": (ago <= 7) & is_("page_view"),
        "page_view_count_30d": (ago <= 30) & is_("page_view"),
        "product_view_count_7d": (ago <= 7) & is_("product_view"),
        "product_view_count_30d": (ago <= 30) & is_("product_view"),
        "add_to_cart_count_7d": (ago <= 7) & is_("add_to_cart"),
        "add_to_cart_count_30d": (ago <= 30) & is_("add_to_cart"),
        "add_to_cart_count_90d": (ago <= 90) & is_("add_to_cart"),
        "checkout_count_30d": (ago <= 30) & is_("checkout"),
        "purchase_count_30d": (ago <= 30) & is_("purchase"),
        "purchase_count_90d": (ago <= 90) & is_("purchase"),
        "purchase_count_365d": (ago <= 365) & is_("purchase"),
        "email_open_count_30d": (ago <= 30) & is_("email_open"),
        "email_click_count_30d": (ago <= 30) & is_("email_click"),
        "store_visit_count_90d": (ago <= 90) & is_("store_visit"),
        "app_launch_count_30d": (ago <= 30) & is_("app_launch"),
        "web_90": (ago <= 90) & (ch == "web"),
        "app_90": (ago <= 90) & (ch == "mobile_app"),
        "email_90": (ago <= 90) & (ch == "email"),
        "store_90": (ago <= 90) & (ch == "store"),
        "prior_30": (ago > 7) & (ago <= 37),
    }
    ind = pd.DataFrame({k: v.astype(np.int32) for k, v in cols.items()})
    purchase = is_("purchase")
    ind["revenue_sum_30d"] = np.where((ago <= 30) & purchase, revenue, 0.0)
    ind["revenue_sum_90d"] = np.where((ago <= 90) & purchase, revenue, 0.0)
    ind["revenue_sum_365d"] = np.where((ago <= 365) & purchase, revenue, 0.0)
    ind["profile_id"] = frame["profile_id"].to_numpy()
    g = ind.groupby("profile_id", sort=True)
    out = g.sum()
    aux = pd.DataFrame(
        {
            "profile_id": ind["profile_id"],
            "ago": ago,
            "purchase_ago": np.where(purchase, ago, np.nan),
            "cart_ago": np.where(is_("add_to_cart"), ago, np.nan),
            "order": np.where((ago <= 365) & purchase, frame["revenue"].to_numpy(), np.nan),
            "day30": np.where(ago <= 30, ago, np.nan),
        }
    ).groupby("profile_id", sort=True)
    out["days_since_first_event"] = aux["ago"].max()
    out["days_since_last_event"] = aux["ago"].min()
    out["days_since_last_purchase"] = aux["purchase_ago"].min()
    out["days_since_last_add_to_cart"] = aux["cart_ago"].min()
    out["max_order_value_365d"] = aux["order"].max()
    out["active_days_30d"] = aux["day30"].nunique()
    div = lambda a, b: (out[a] / out[b]).where(out[b] > 0)  # noqa: E731
    out["average_order_value_365d"] = div("revenue_sum_365d", "purchase_count_365d")
    out["funnel_stage_30d"] = np.select(
        [
            out["purchase_count_30d"] > 0,
            out["checkout_count_30d"] > 0,
            out["add_to_cart_count_30d"] > 0,
            out["product_view_count_30d"] > 0,
        ],
        [4, 3, 2, 1],
        0,
    )
    out["view_to_cart_ratio_30d"] = div("add_to_cart_count_30d", "product_view_count_30d")
    out["cart_to_purchase_ratio_90d"] = div("purchase_count_90d", "add_to_cart_count_90d")
    for src, name in (
        ("web_90", "web"),
        ("app_90", "mobile_app"),
        ("email_90", "email"),
        ("store_90", "store"),
    ):
        out[f"channel_share_{name}_90d"] = div(src, "event_count_90d")
    out["events_trend_7d_vs_prior_30d"] = (out["event_count_7d"] / 7 + 0.05) / (out["prior_30"] / 30 + 0.05)
    return out[CORE].reset_index()
