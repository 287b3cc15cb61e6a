"""The feature registry: every feature declared once, with a label a person can read.

Each declaration is a measure, aggregates over windows and a feature expression (:mod:`.feature_set`),
all plain SQL fragments that DuckDB and Spark SQL both accept; directions are :mod:`.monotone`'s.

One function per family (activity, recency, monetary, funnel, channel, category, purchase cycles,
trend, profile; season in :mod:`.seasonality`) declares its features; :func:`build_registry`
composes them in column order. Which of them a model trains on is :mod:`.selection`'s business.

The aggregates read the same measure columns from raw events or the daily rollup: one compiled
query serves one snapshot off the events and stacked snapshots off the rollup, identically.
"""

from __future__ import annotations

from dataclasses import replace

from propensity.core.config import FeatureConfig
from propensity.features.build.feature_set import (
    EVERY_EVENT,
    Aggregate,
    Feature,
    FeatureSet,
    Measure,
    column_parts,
    safe_ratio,
)
from propensity.features.build.learned_events import learned_event_features, learned_event_measures
from propensity.features.build.monotone import monotone_direction
from propensity.features.build.purchase_cycle import purchase_cycle_features
from propensity.features.build.seasonality import season_features
from propensity.features.build.traits import declared_traits
from propensity.features.contract import ACTIVITY_EVENT_TYPES, CHANNELS, CONSENT_COLUMNS

KNOWN_NAMESPACES_SQL = "(crm_id IS NOT NULL OR email_sha256 IS NOT NULL OR phone_sha256 IS NOT NULL)"
# Orders above this count as this much in the spread of order values (keeps squares exact).
ORDER_VALUE_CAP = 1_000_000
# A purchase row that starts an order: every row without an order_id, the first line of one
# with it (ingest's order_lines, features.identity.orders); its value is the order's revenue.
ORDER_START = "event_type = 'purchase' AND coalesce(order_lines, 1) > 0"
ORDER_VALUE = "coalesce(order_revenue, revenue)"

PRETTY = {
    "page_view": "Page views",
    "product_view": "Product views",
    "search": "Searches",
    "add_to_cart": "Add to cart events",
    "remove_from_cart": "Remove from cart events",
    "checkout": "Checkouts",
    "purchase": "Purchases",
    "email_send": "Emails received",
    "email_open": "Email opens",
    "email_click": "Email clicks",
    "push_open": "Push opens",
    "app_launch": "App launches",
    "call_center_call": "Call-centre calls",
    "store_visit": "Store visits",
    "offer_redeemed": "Offers redeemed",
    "login": "Log-ins",
}


def _w(days: int) -> str:
    return f"{days}d"


def _window_label(days: int) -> str:
    return {
        1: "last day",
        7: "last 7 days",
        30: "last 30 days",
        90: "last 90 days",
        365: "last 365 days",
    }.get(days, f"last {days} days")


def _trend(recent_count: str, recent_days: int, prior_count: str, prior_days: int) -> str:
    # Smoothed by 0.05 events a day, so that no activity in either window reads as 1 (flat).
    return (
        f"(CAST({recent_count} AS DOUBLE) / {recent_days} + 0.05) / "
        f"(CAST({prior_count} AS DOUBLE) / {prior_days} + 0.05)"
    )


def _agg(measure: str, fn: str, start: int | None, end: int = 0) -> Aggregate:
    """``fn`` over ``measure`` in ``[as_of - start, as_of - end)``, named after all four."""
    span = "all" if start is None else f"{start}_{end}"
    return Aggregate(f"a_{fn}_{measure}_{span}", measure, fn, start, end)


def _measures(named: dict[str, str]) -> dict[str, Measure]:
    """The per-event measures every family reads, categories' own last."""
    measures: dict[str, Measure] = {"events": Measure("events", "1", condition=EVERY_EVENT)}
    for t in ACTIVITY_EVENT_TYPES:
        measures[t] = Measure.indicator(t, ORDER_START if t == "purchase" else f"event_type = '{t}'")
    # DECIMAL: sums are exact, so they do not depend on the order an engine adds them in.
    measures["revenue"] = Measure(
        "revenue",
        "CAST(CASE WHEN event_type = 'purchase' THEN coalesce(revenue, 0) ELSE 0 END AS DECIMAL(18, 2))",
        sql_type="DECIMAL(18, 2)",
    )
    measures["max_order_value"] = Measure(
        "max_order_value",
        f"CASE WHEN {ORDER_START} THEN {ORDER_VALUE} END",
        rollup="max",
        sql_type="DOUBLE",
    )
    # Squared order values (capped at ORDER_VALUE_CAP) for the spread of order values: exact
    # decimals, so the spread does not depend on the order an engine adds them in.
    capped = f"CAST(least(coalesce({ORDER_VALUE}, 0), {ORDER_VALUE_CAP}) AS DECIMAL(18, 2))"
    measures["order_value_squared"] = Measure(
        "order_value_squared",
        f"CAST(CASE WHEN {ORDER_START} THEN {capped} * {capped} ELSE 0 END AS DECIMAL(38, 4))",
        sql_type="DECIMAL(38, 4)",
    )
    measures["known_identity"] = Measure.indicator("known_identity", KNOWN_NAMESPACES_SQL)
    # Written by ingest/stitching: identities first seen on this event (see features.identity).
    measures["new_identities"] = Measure("new_identities", "coalesce(new_identities, 0)")
    for c in CHANNELS:
        measures[f"channel_{c}"] = Measure.indicator(f"channel_{c}", f"channel = '{c}'")
    for cat, name in named.items():
        measures.update(_category_measures(cat, name))
    return measures


def _category_measures(category: str, name: str) -> dict[str, Measure]:
    """Product views, purchases and revenue of one category."""
    safe = category.replace("'", "''")
    return {
        f"view_{name}": Measure.indicator(
            f"view_{name}", f"event_type = 'product_view' AND product_category = '{safe}'"
        ),
        f"purchase_{name}": Measure.indicator(
            f"purchase_{name}", f"event_type = 'purchase' AND product_category = '{safe}'"
        ),
        f"revenue_{name}": Measure(
            f"revenue_{name}",
            f"CAST(CASE WHEN event_type = 'purchase' AND product_category = '{safe}' "
            f"THEN coalesce(revenue, 0) ELSE 0 END AS DECIMAL(18, 2))",
            sql_type="DECIMAL(18, 2)",
        ),
    }


def activity_features(windows: list[int]) -> list[Feature]:
    """Events, active days and each activity type's count, per window."""
    out = []
    for w in windows:
        a = _agg("events", "sum", w)
        out.append(Feature(f"event_count_{_w(w)}", f"Events, {_window_label(w)}", "activity", a.name, (a,)))
        a = _agg("events", "active_days", w)
        out.append(
            Feature(
                f"active_days_{_w(w)}",
                f"Days with any activity, {_window_label(w)}",
                "activity",
                a.name,
                (a,),
            )
        )
        for t in ACTIVITY_EVENT_TYPES:
            a = _agg(t, "sum", w)
            label = f"{PRETTY[t]}, {_window_label(w)}"
            out.append(Feature(f"{t}_count_{_w(w)}", label, "activity", a.name, (a,)))
    return out


def recency_features() -> list[Feature]:
    """Days since the first and last event and each type's last (in the lookback; NULL if never)."""
    first, last = _agg("events", "first_day", None), _agg("events", "last_day", None)
    out = [
        Feature(
            f"days_since_{which}_event",
            f"Days since the {which} event",
            "recency",
            f"as_of_day - {a.name}",
            (a,),
        )
        for which, a in (("first", first), ("last", last))
    ]
    for t in ACTIVITY_EVENT_TYPES:
        a = _agg(t, "last_day", None)
        out.append(
            Feature(
                f"days_since_last_{t}",
                f"Days since the last {PRETTY[t].lower().rstrip('s')}",
                "recency",
                f"as_of_day - {a.name}",
                (a,),
            )
        )
    return out


def monetary_features(windows: list[int]) -> list[Feature]:
    """Revenue, average and largest order, per window."""
    out = []
    for w in windows:
        rev, n = _agg("revenue", "sum", w), _agg("purchase", "sum", w)
        mx = _agg("max_order_value", "max", w)
        label = _window_label(w)
        out += [
            Feature(f"revenue_sum_{_w(w)}", f"Revenue, {label}", "monetary", rev.name, (rev,)),
            Feature(
                f"average_order_value_{_w(w)}",
                f"Average order value, {label}",
                "monetary",
                safe_ratio(rev.name, n.name),
                (rev, n),
            ),
            Feature(f"max_order_value_{_w(w)}", f"Largest order, {label}", "monetary", mx.name, (mx,)),
        ]
    return out


def funnel_features(windows: list[int], n_days: int) -> list[Feature]:
    """Deepest stage and step ratios per window, abandoned carts in windows longer than
    ``n_days``, and an open cart from the last ``n_days`` days."""
    out = []
    for w in windows:
        out += _funnel_window(w)
        if w > n_days:
            out.append(_cart_abandoned(w, n_days))
    last_cart, last_buy = _agg("add_to_cart", "last_day", None), _agg("purchase", "last_day", None)
    out.append(
        Feature(
            "open_cart",
            f"Has a cart from the last {n_days} days with no purchase since",
            "funnel",
            f"CASE WHEN {last_cart.name} >= as_of_day - {n_days} AND ({last_buy.name} IS NULL OR "
            f"{last_buy.name} < {last_cart.name}) THEN 1 ELSE 0 END",
            (last_cart, last_buy),
        )
    )
    return out


def _funnel_window(w: int) -> list[Feature]:
    """The deepest funnel stage of window ``w`` and its view -> cart -> purchase ratios."""
    view, cart, check, buy = (
        _agg(m, "sum", w) for m in ("product_view", "add_to_cart", "checkout", "purchase")
    )
    stage = (
        f"CASE WHEN {buy.name} > 0 THEN 4 WHEN {check.name} > 0 THEN 3 WHEN {cart.name} > 0 THEN 2 "
        f"WHEN {view.name} > 0 THEN 1 ELSE 0 END"
    )
    return [
        Feature(
            f"funnel_stage_{_w(w)}",
            f"Deepest funnel stage (0 none .. 4 purchase), {_window_label(w)}",
            "funnel",
            stage,
            (view, cart, check, buy),
        ),
        Feature(
            f"view_to_cart_ratio_{_w(w)}",
            f"Add-to-carts per product view, {_window_label(w)}",
            "funnel",
            safe_ratio(cart.name, view.name),
            (cart, view),
        ),
        Feature(
            f"cart_to_purchase_ratio_{_w(w)}",
            f"Purchases per add-to-cart, {_window_label(w)}",
            "funnel",
            safe_ratio(buy.name, cart.name),
            (buy, cart),
        ),
    ]


def _cart_abandoned(w: int, n_days: int) -> Feature:
    """The last cart of the window, old enough that its N-day chance to convert is over before
    as_of, with no purchase on or after its day."""
    last_cart, last_buy = _agg("add_to_cart", "last_day", w), _agg("purchase", "last_day", w)
    abandoned = (
        f"CASE WHEN {last_cart.name} IS NOT NULL AND {last_cart.name} <= as_of_day - {n_days} "
        f"AND ({last_buy.name} IS NULL OR {last_buy.name} < {last_cart.name}) THEN 1 ELSE 0 END"
    )
    return Feature(
        f"cart_abandoned_{_w(w)}",
        f"Abandoned a cart (no purchase within {n_days} days), {_window_label(w)}",
        "funnel",
        abandoned,
        (last_cart, last_buy),
    )


def channel_features(windows: list[int]) -> list[Feature]:
    """Each channel's share of events (windows of 30 days or more) and email open and click
    rates, per window."""
    out = []
    for w in windows:
        total = _agg("events", "sum", w)
        if w >= 30:
            for c in CHANNELS:
                a = _agg(f"channel_{c}", "sum", w)
                out.append(
                    Feature(
                        f"channel_share_{c}_{_w(w)}",
                        f"Share of events on {c.replace('_', ' ')}, {_window_label(w)}",
                        "channel",
                        safe_ratio(a.name, total.name),
                        (a, total),
                    )
                )
        send, opened, click = (_agg(f"email_{m}", "sum", w) for m in ("send", "open", "click"))
        out += [
            Feature(
                f"email_open_rate_{_w(w)}",
                f"Email opens per email received, {_window_label(w)}",
                "channel",
                safe_ratio(opened.name, send.name),
                (opened, send),
            ),
            Feature(
                f"email_click_rate_{_w(w)}",
                f"Email clicks per email opened, {_window_label(w)}",
                "channel",
                safe_ratio(click.name, opened.name),
                (click, opened),
            ),
        ]
    return out


def category_features(named: dict[str, str], windows: list[int]) -> list[Feature]:
    """Per category: product views and purchases in the long windows (30 days or more, else
    the longest), and days since its last purchase."""
    long_windows = [w for w in windows if w >= 30] or windows[-1:]
    out = []
    for cat, name in named.items():
        for w in long_windows:
            v, p = _agg(f"view_{name}", "sum", w), _agg(f"purchase_{name}", "sum", w)
            label = _window_label(w)
            out += [
                Feature(
                    f"category_view_count_{_w(w)}_{name}",
                    f"{cat.title()} product views, {label}",
                    "category",
                    v.name,
                    (v,),
                ),
                Feature(
                    f"category_purchase_count_{_w(w)}_{name}",
                    f"{cat.title()} purchases, {label}",
                    "category",
                    p.name,
                    (p,),
                ),
            ]
        last = _agg(f"purchase_{name}", "last_day", None)
        out.append(
            Feature(
                f"days_since_last_purchase_{name}",
                f"Days since the last {cat} purchase",
                "category",
                f"as_of_day - {last.name}",
                (last,),
            )
        )
    return out


def purchase_cycles(named: dict[str, str]) -> list[Feature]:
    """The customer's own rhythm over the lookback, for all purchases and for each category
    (:mod:`propensity.features.build.purchase_cycle`)."""
    out = purchase_cycle_features(_agg, "purchase", "revenue", "purchase_cycle", "", "")
    for cat, name in named.items():
        out += purchase_cycle_features(
            _agg, f"purchase_{name}", f"revenue_{name}", "category", f"category_{{}}_{name}", f" ({cat})"
        )
    return out


def trend_features() -> list[Feature]:
    """Daily rate of events and of product views in the recent window against the one before."""
    out = []
    for recent, prior in ((7, 30), (30, 90)):
        for measure, what in (("events", "Activity"), ("product_view", "Product views")):
            a, b = _agg(measure, "sum", recent), _agg(measure, "sum", recent + prior, recent)
            out.append(
                Feature(
                    f"{measure}_trend_{recent}d_vs_prior_{prior}d",
                    f"{what} in the last {recent} days relative to the {prior} days before",
                    "trend",
                    _trend(a.name, recent, b.name, prior),
                    (a, b),
                )
            )
    return out


def profile_features() -> list[Feature]:
    """Known or anonymous, and identities seen so far (point in time: known only once a known
    identity was seen before as_of)."""
    known, identities = _agg("known_identity", "sum", None), _agg("new_identities", "sum", None)
    return [
        Feature(
            "is_known",
            "Signed in or identified before",
            "profile",
            f"CASE WHEN {known.name} > 0 THEN 1 ELSE 0 END",
            (known,),
        ),
        Feature(
            "identity_count",
            "Identities (devices, accounts, emails) seen so far",
            "profile",
            identities.name,
            (identities,),
        ),
    ]


def build_registry(
    config: FeatureConfig,
    categories: list[str] | None = None,
    lookback_days: int = 730,
    event_types: list[str] | None = None,
) -> FeatureSet:
    """Declare every feature for the configured windows, categories and learned event types,
    family by family (the order is the feature table's column order; learned types and traits
    come last, so a table without them keeps its columns where they were)."""
    windows = config.windows_days
    categories = list(categories if categories is not None else (config.categories or []))
    named = column_parts(categories)
    event_types = list(event_types or [])
    typed = column_parts(event_types)
    features = [
        *activity_features(windows),
        *recency_features(),
        *monetary_features(windows),
        *funnel_features(windows, config.cart_abandonment_days),
        *channel_features(windows),
        *category_features(named, windows),
        *purchase_cycles(named),
        *trend_features(),
        *profile_features(),
        *season_features(config.season_peaks),
        *learned_event_features(_agg, typed, windows, _window_label),
    ]
    features = [replace(f, monotone=monotone_direction(f.name, f.family)) for f in features]
    measures = {**_measures(named), **learned_event_measures(typed)}
    traits = declared_traits(config, {f.name for f in features})
    return FeatureSet(measures, features, max(lookback_days, max(windows)), categories, event_types, traits)


# Profile attributes carried in the feature table but never modelled (consent flags).
CARRIED_COLUMNS: tuple[str, ...] = CONSENT_COLUMNS
