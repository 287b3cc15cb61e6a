"""Purchase-cycle features: each customer's own rhythm of buying, against which "lapsed" and
"due" are measured (days since the first purchase, purchase days, the mean gap between them,
how overdue the next one is, order values and their spread).

Declared with the same aggregates as every other feature (:mod:`propensity.features.build.feature_set`),
so one snapshot and stacked snapshots compute them alike.
"""

from __future__ import annotations

from propensity.features.build.feature_set import Aggregate, Feature, safe_ratio


def purchase_cycle_features(
    agg, purchases: str, revenue: str, family: str, name_format: str, label_suffix: str
) -> list[Feature]:
    """Customer age, distinct purchase days, the typical gap between them, how overdue the next
    purchase is against that gap, purchase days per 30 days of age and order values, all over
    the lookback (``name_format`` "" for all purchases, else e.g. ``category_{}_yoga``)."""
    named = (lambda base: name_format.format(base)) if name_format else (lambda base: base)
    first, last = agg(purchases, "first_day", None), agg(purchases, "last_day", None)
    days, orders = agg(purchases, "active_days", None), agg(purchases, "sum", None)
    value = agg(revenue, "sum", None)
    mean_gap = f"CAST({last.name} - {first.name} AS DOUBLE) / ({days.name} - 1)"
    out = [
        Feature(
            named("days_since_first_purchase"),
            f"Days since the first purchase{label_suffix}",
            family,
            f"as_of_day - {first.name}",
            (first,),
        ),
        Feature(
            named("purchase_days"),
            f"Days with a purchase, lookback{label_suffix}",
            family,
            days.name,
            (days,),
        ),
        Feature(
            named("mean_days_between_purchases"),
            f"Mean days between purchase days{label_suffix}",
            family,
            f"CASE WHEN {days.name} >= 2 THEN {mean_gap} END",
            (first, last, days),
        ),
        # Days since the last purchase in units of the customer's own mean gap: 1 = due now.
        Feature(
            named("purchase_overdue_ratio"),
            f"Days since the last purchase over the mean gap{label_suffix}",
            family,
            f"CASE WHEN {days.name} >= 2 THEN (as_of_day - {last.name}) / ({mean_gap}) END",
            (first, last, days),
        ),
        Feature(
            named("purchase_days_per_30d"),
            f"Purchase days per 30 days since the first purchase{label_suffix}",
            family,
            f"CASE WHEN {days.name} > 0 THEN 30.0 * {days.name} / (as_of_day - {first.name}) END",
            (first, days),
        ),
        Feature(
            named("average_order_value"),
            f"Average order value, lookback{label_suffix}",
            family,
            safe_ratio(value.name, orders.name),
            (value, orders),
        ),
    ]
    if not name_format:
        out.append(_purchase_day_dispersion(agg, purchases, first, family))
        out.append(_order_value_spread(agg, value, orders, family))
    return out


def _order_value_spread(agg, value: Aggregate, orders: Aggregate, family: str) -> Feature:
    """The sample standard deviation of order values, from exact sums: n, sum and sum of
    squares (of order values capped as the registry's ``order_value_squared`` measure says)."""
    squares = agg("order_value_squared", "sum", None)
    spread = (
        f"CASE WHEN {orders.name} >= 2 THEN sqrt(greatest(CAST({squares.name} AS DOUBLE) - "
        f"CAST({value.name} AS DOUBLE) * CAST({value.name} AS DOUBLE) / {orders.name}, 0) "
        f"/ ({orders.name} - 1)) END"
    )
    return Feature(
        "order_value_std",
        "Spread (standard deviation) of order values, lookback",
        family,
        spread,
        (squares, value, orders),
    )


def _purchase_day_dispersion(agg, purchases: str, first, family: str) -> Feature:
    """How unevenly purchase days fall over the last four 90-day quarters: variance over mean
    of the quarters' purchase-day counts (about 1 for purchases at random, below 1 for a
    steady rhythm, above for bursts), for customers who bought before the first quarter.

    The proxy for the spread of the gaps between purchase days, which needs each purchase
    day's predecessor: an ordered statistic that none of the window functions (sum, max,
    first / last day, active days) give, and that would take a window function over every
    profile's purchase days in the SQL plans.
    """
    quarters = [agg(purchases, "active_days", start, start - 90) for start in (90, 180, 270, 360)]
    names = [q.name for q in quarters]
    total = " + ".join(names)
    mean = f"(CAST({total} AS DOUBLE) / 4)"
    variance = " + ".join(f"({n} - {mean}) * ({n} - {mean})" for n in names)
    return Feature(
        "purchase_day_dispersion",
        "Unevenness of purchase days over the last four quarters (1 = random)",
        family,
        f"CASE WHEN {first.name} < as_of_day - 360 AND {total} > 0 THEN ({variance}) / 3 / {mean} END",
        (first, *quarters),
    )
