"""The feature registry: every feature declared once, with a label a person can read.

Each declaration is a measure, aggregates over windows and a feature expression
(:mod:`propensity.features.build.feature_set`), all plain SQL fragments that DuckDB and Spark SQL
both accept.

Because the aggregates read the same measure columns whether they come from raw events or
from the daily rollup, one compiled query serves one snapshot straight off the events and
many stacked snapshots off the rollup, with identical values.
"""

from __future__ import annotations

import re

from propensity.core.config import FeatureConfig, FeatureSelection, GovernanceConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import (
    EVERY_EVENT,
    Aggregate,
    Feature,
    FeatureSet,
    Measure,
    is_selected,
    safe_ratio,
)
from propensity.features.build.purchase_cycle import purchase_cycle_features
from propensity.features.contract import ACTIVITY_EVENT_TYPES, CHANNELS, CONSENT_COLUMNS

KNOWN_NAMESPACES_SQL = "(crm_id IS NOT NULL OR email_sha256 IS NOT NULL OR phone_sha256 IS NOT NULL)"
# Orders above this count as this much in the spread of order values (keeps squares exact).
ORDER_VALUE_CAP = 1_000_000
FUNNEL_STAGES = {0: "none", 1: "viewed a product", 2: "added to cart", 3: "checked out", 4: "purchased"}

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


def category_names(categories: list[str]) -> dict[str, str]:
    """Each category's part in column names: lower case, letters, digits and ``_``, unique.

    Categories come from the data ("Yoga Mats", "Kids' shoes"); column names must not.
    """
    names: dict[str, str] = {}
    for category in categories:
        base = re.sub(r"[^0-9a-z]+", "_", category.lower()).strip("_") or "blank"
        name, n = base, 2
        while name in names.values():
            name, n = f"{base}_{n}", n + 1
        names[category] = name
    return names


def build_registry(
    config: FeatureConfig, categories: list[str] | None = None, lookback_days: int = 730
) -> FeatureSet:
    """Declare every feature for the configured windows and categories."""
    windows = config.windows_days
    categories = list(categories if categories is not None else (config.categories or []))
    lookback = max(lookback_days, max(windows))
    measures: dict[str, Measure] = {"events": Measure("events", "1", condition=EVERY_EVENT)}
    for t in ACTIVITY_EVENT_TYPES:
        measures[t] = Measure.indicator(t, f"event_type = '{t}'")
    # DECIMAL: sums are exact, so they do not depend on the order an engine adds them in.
    measures["revenue"] = Measure(
        "revenue",
        "CAST(CASE WHEN event_type = 'purchase' THEN coalesce(revenue, 0) ELSE 0 END AS DECIMAL(18, 2))",
        sql_type="DECIMAL(18, 2)",
    )
    measures["max_order_value"] = Measure(
        "max_order_value",
        "CASE WHEN event_type = 'purchase' THEN revenue END",
        rollup="max",
        sql_type="DOUBLE",
    )
    # Squared order values (capped at ORDER_VALUE_CAP) for the spread of order values: exact
    # decimals, so the spread does not depend on the order an engine adds them in.
    capped = f"CAST(least(coalesce(revenue, 0), {ORDER_VALUE_CAP}) AS DECIMAL(18, 2))"
    measures["order_value_squared"] = Measure(
        "order_value_squared",
        f"CAST(CASE WHEN event_type = 'purchase' THEN {capped} * {capped} ELSE 0 END AS DECIMAL(38, 4))",
        sql_type="DECIMAL(38, 4)",
    )
    measures["known_identity"] = Measure.indicator("known_identity", KNOWN_NAMESPACES_SQL)
    # Written by ingest/stitching: identities first seen on this event (see features.identity).
    measures["new_identities"] = Measure("new_identities", "coalesce(new_identities, 0)")
    for c in CHANNELS:
        measures[f"channel_{c}"] = Measure.indicator(f"channel_{c}", f"channel = '{c}'")
    named = category_names(categories)
    for cat, name in named.items():
        safe = cat.replace("'", "''")
        measures[f"view_{name}"] = Measure.indicator(
            f"view_{name}", f"event_type = 'product_view' AND product_category = '{safe}'"
        )
        measures[f"purchase_{name}"] = Measure.indicator(
            f"purchase_{name}", f"event_type = 'purchase' AND product_category = '{safe}'"
        )
        measures[f"revenue_{name}"] = Measure(
            f"revenue_{name}",
            f"CAST(CASE WHEN event_type = 'purchase' AND product_category = '{safe}' "
            f"THEN coalesce(revenue, 0) ELSE 0 END AS DECIMAL(18, 2))",
            sql_type="DECIMAL(18, 2)",
        )

    def agg(measure: str, fn: str, start: int | None, end: int = 0) -> Aggregate:
        span = "all" if start is None else f"{start}_{end}"
        return Aggregate(f"a_{fn}_{measure}_{span}", measure, fn, start, end)

    features: list[Feature] = []
    add = features.append

    # activity
    for w in windows:
        a = agg("events", "sum", w)
        add(Feature(f"event_count_{_w(w)}", f"Events, {_window_label(w)}", "activity", a.name, (a,)))
        a = agg("events", "active_days", w)
        add(
            Feature(
                f"active_days_{_w(w)}",
                f"Days with any activity, {_window_label(w)}",
                "activity",
                a.name,
                (a,),
            )
        )
        for t in ACTIVITY_EVENT_TYPES:
            a = agg(t, "sum", w)
            add(Feature(f"{t}_count_{_w(w)}", f"{PRETTY[t]}, {_window_label(w)}", "activity", a.name, (a,)))

    # recency (within the lookback; NULL when never seen there)
    first, last = agg("events", "first_day", None), agg("events", "last_day", None)
    add(
        Feature(
            "days_since_first_event",
            "Days since the first event",
            "recency",
            f"as_of_day - {first.name}",
            (first,),
        )
    )
    add(
        Feature(
            "days_since_last_event",
            "Days since the last event",
            "recency",
            f"as_of_day - {last.name}",
            (last,),
        )
    )
    for t in ACTIVITY_EVENT_TYPES:
        a = agg(t, "last_day", None)
        add(
            Feature(
                f"days_since_last_{t}",
                f"Days since the last {PRETTY[t].lower().rstrip('s')}",
                "recency",
                f"as_of_day - {a.name}",
                (a,),
            )
        )

    # monetary
    for w in windows:
        rev, n, mx = agg("revenue", "sum", w), agg("purchase", "sum", w), agg("max_order_value", "max", w)
        add(Feature(f"revenue_sum_{_w(w)}", f"Revenue, {_window_label(w)}", "monetary", rev.name, (rev,)))
        add(
            Feature(
                f"average_order_value_{_w(w)}",
                f"Average order value, {_window_label(w)}",
                "monetary",
                safe_ratio(rev.name, n.name),
                (rev, n),
            )
        )
        add(
            Feature(
                f"max_order_value_{_w(w)}", f"Largest order, {_window_label(w)}", "monetary", mx.name, (mx,)
            )
        )

    # funnel
    n_days = config.cart_abandonment_days
    for w in windows:
        view, cart, check, buy = (
            agg(m, "sum", w) for m in ("product_view", "add_to_cart", "checkout", "purchase")
        )
        stage = (
            f"CASE WHEN {buy.name} > 0 THEN 4 WHEN {check.name} > 0 THEN 3 WHEN {cart.name} > 0 THEN 2 "
            f"WHEN {view.name} > 0 THEN 1 ELSE 0 END"
        )
        add(
            Feature(
                f"funnel_stage_{_w(w)}",
                f"Deepest funnel stage (0 none .. 4 purchase), {_window_label(w)}",
                "funnel",
                stage,
                (view, cart, check, buy),
            )
        )
        add(
            Feature(
                f"view_to_cart_ratio_{_w(w)}",
                f"Add-to-carts per product view, {_window_label(w)}",
                "funnel",
                safe_ratio(cart.name, view.name),
                (cart, view),
            )
        )
        add(
            Feature(
                f"cart_to_purchase_ratio_{_w(w)}",
                f"Purchases per add-to-cart, {_window_label(w)}",
                "funnel",
                safe_ratio(buy.name, cart.name),
                (buy, cart),
            )
        )
        if w > n_days:
            # The last cart of the window, old enough that its N-day chance to convert is over
            # before as_of, with no purchase on or after its day.
            last_cart, last_buy = agg("add_to_cart", "last_day", w), agg("purchase", "last_day", w)
            abandoned = (
                f"CASE WHEN {last_cart.name} IS NOT NULL AND {last_cart.name} <= as_of_day - {n_days} "
                f"AND ({last_buy.name} IS NULL OR {last_buy.name} < {last_cart.name}) THEN 1 ELSE 0 END"
            )
            add(
                Feature(
                    f"cart_abandoned_{_w(w)}",
                    f"Abandoned a cart (no purchase within {n_days} days), {_window_label(w)}",
                    "funnel",
                    abandoned,
                    (last_cart, last_buy),
                )
            )
    last_cart, last_buy = agg("add_to_cart", "last_day", None), agg("purchase", "last_day", None)
    add(
        Feature(
            "open_cart",
            f"Has a cart from the last {n_days} days with no purchase since",
            "funnel",
            f"CASE WHEN {last_cart.name} >= as_of_day - {n_days} AND ({last_buy.name} IS NULL OR "
            f"{last_buy.name} < {last_cart.name}) THEN 1 ELSE 0 END",
            (last_cart, last_buy),
        )
    )

    # channel
    for w in windows:
        total = agg("events", "sum", w)
        if w >= 30:
            for c in CHANNELS:
                a = agg(f"channel_{c}", "sum", w)
                add(
                    Feature(
                        f"channel_share_{c}_{_w(w)}",
                        f"Share of events on {c.replace('_', ' ')}, {_window_label(w)}",
                        "channel",
                        safe_ratio(a.name, total.name),
                        (a, total),
                    )
                )
        send, opened, click = (
            agg("email_send", "sum", w),
            agg("email_open", "sum", w),
            agg("email_click", "sum", w),
        )
        add(
            Feature(
                f"email_open_rate_{_w(w)}",
                f"Email opens per email received, {_window_label(w)}",
                "channel",
                safe_ratio(opened.name, send.name),
                (opened, send),
            )
        )
        add(
            Feature(
                f"email_click_rate_{_w(w)}",
                f"Email clicks per email opened, {_window_label(w)}",
                "channel",
                safe_ratio(click.name, opened.name),
                (click, opened),
            )
        )

    # category affinity
    long_windows = [w for w in windows if w >= 30] or windows[-1:]
    for cat, name in named.items():
        for w in long_windows:
            v, p = agg(f"view_{name}", "sum", w), agg(f"purchase_{name}", "sum", w)
            add(
                Feature(
                    f"category_view_count_{_w(w)}_{name}",
                    f"{cat.title()} product views, {_window_label(w)}",
                    "category",
                    v.name,
                    (v,),
                )
            )
            add(
                Feature(
                    f"category_purchase_count_{_w(w)}_{name}",
                    f"{cat.title()} purchases, {_window_label(w)}",
                    "category",
                    p.name,
                    (p,),
                )
            )
        last = agg(f"purchase_{name}", "last_day", None)
        add(
            Feature(
                f"days_since_last_purchase_{name}",
                f"Days since the last {cat} purchase",
                "category",
                f"as_of_day - {last.name}",
                (last,),
            )
        )

    # purchase cycle: the customer's own rhythm over the lookback
    features += purchase_cycle_features(agg, "purchase", "revenue", "purchase_cycle", "", "")
    for cat, name in named.items():
        features += purchase_cycle_features(
            agg, f"purchase_{name}", f"revenue_{name}", "category", f"category_{{}}_{name}", f" ({cat})"
        )

    # trend: daily rate of the recent window against the one before it
    for recent, prior in ((7, 30), (30, 90)):
        a, b = agg("events", "sum", recent), agg("events", "sum", recent + prior, recent)
        add(
            Feature(
                f"events_trend_{recent}d_vs_prior_{prior}d",
                f"Activity in the last {recent} days relative to the {prior} days before",
                "trend",
                _trend(a.name, recent, b.name, prior),
                (a, b),
            )
        )
        a, b = agg("product_view", "sum", recent), agg("product_view", "sum", recent + prior, recent)
        add(
            Feature(
                f"product_view_trend_{recent}d_vs_prior_{prior}d",
                f"Product views in the last {recent} days relative to the {prior} days before",
                "trend",
                _trend(a.name, recent, b.name, prior),
                (a, b),
            )
        )

    # profile (point in time: known only once a known identity was seen before as_of)
    known = agg("known_identity", "sum", None)
    add(
        Feature(
            "is_known",
            "Signed in or identified before",
            "profile",
            f"CASE WHEN {known.name} > 0 THEN 1 ELSE 0 END",
            (known,),
        )
    )
    identities = agg("new_identities", "sum", None)
    add(
        Feature(
            "identity_count",
            "Identities (devices, accounts, emails) seen so far",
            "profile",
            identities.name,
            (identities,),
        )
    )
    return FeatureSet(measures, features, lookback, categories)


# Profile attributes joined after aggregation; see sql_compiler.PROFILE_FEATURES for their SQL.
PROFILE_ATTRIBUTE_FEATURES: dict[str, tuple[str, str]] = {
    "loyalty_tier": ("Loyalty tier", "profile"),
    "tenure_days": ("Days since sign-up", "profile"),
}
CARRIED_COLUMNS: tuple[str, ...] = CONSENT_COLUMNS


def model_features(
    fs: FeatureSet, selection: FeatureSelection, governance: GovernanceConfig, model_name: str
) -> dict[str, str]:
    """The features a model trains on, name -> label, in registry order.

    ``selection`` includes / excludes by name or family; features ``governance`` labels
    sensitive are dropped, and naming one in ``include`` is refused, as is an unknown name.
    """
    labels = fs.labels()
    families = {f.name: f.family for f in fs.features if f.is_feature}
    for name, (label, family) in PROFILE_ATTRIBUTE_FEATURES.items():
        families[name], labels[name] = family, label
    include, exclude = set(selection.include), set(selection.exclude)
    unknown = sorted((include | exclude) - set(families) - set(families.values()))
    if unknown:
        raise UserError(
            f"model '{model_name}': features include/exclude names unknown feature or family `{unknown[0]}`"
        )
    sensitive = set(governance.sensitive_features)
    refused = sorted(include & sensitive)
    if refused:
        raise UserError(
            f"model '{model_name}': feature `{refused[0]}` is labelled sensitive and is refused for "
            f"marketing action '{governance.marketing_action}'"
        )
    return {
        name: labels[name]
        for name, family in families.items()
        if is_selected(name, family, list(include), list(exclude)) and name not in sensitive
    }
