"""The monotone directions declared for the registry's features: what more (or more recent)
behaviour can only do to the chance of an outcome that occurs.

LightGBM holds each directed feature's effect to its direction (``training.monotone_constraints``);
a churn model (an outcome that does not occur) flips them (:meth:`FeatureSet.monotone`).
"""

from __future__ import annotations

import re

from propensity.features.contract import ACTIVITY_EVENT_TYPES

# Event types whose counts say nothing certain about the chance of acting: emails are sent by
# the marketer, not chosen by the customer; removals from the cart and calls to the call
# centre can as well be doubts or complaints.
UNDIRECTED_EVENT_TYPES = ("email_send", "remove_from_cart", "call_center_call")
# Purchases (and checkouts, their last step) follow each customer's own rhythm: one who bought
# last week is often not due again yet, so their recency and short-window counts have no
# direction (on the demo's churn model, holding them cost about 0.02 test AUC); only totals over
# a year or the whole lookback, which measure the rate, are directed.
PURCHASE_EVENT_TYPES = ("purchase", "checkout")
_ENGAGEMENT = "|".join(
    t for t in ACTIVITY_EVENT_TYPES if t not in UNDIRECTED_EVENT_TYPES + PURCHASE_EVENT_TYPES
)
_PURCHASES = "|".join(PURCHASE_EVENT_TYPES)
# (pattern of the name, direction), first match wins. Directions are for an outcome that
# occurs (a purchase, a click): more engagement and more recent engagement never make it less
# likely. Recency of engagement: decreasing. Engagement counts, active days and rates: increasing.
# Purchases, checkouts and revenue: increasing over 365 days and the lookback only. No direction
# where it is not a fact: customer age, purchase recency, order values (an upsell is an order
# above the customer's own average), gaps, shares, trends, funnel stages and flags, identities.
MONOTONE_RULES: tuple[tuple[str, int], ...] = (
    (r"days_since_last_event", -1),
    (rf"days_since_last_({_ENGAGEMENT})", -1),
    (r"(event_count|active_days)_\d+d", 1),
    (rf"({_ENGAGEMENT})_count_\d+d", 1),
    (r"category_view_count_\d+d_.+", 1),
    (rf"({_PURCHASES})_count_365d", 1),
    (r"category_purchase_count_365d_.+", 1),
    (r"revenue_sum_365d", 1),
    (r"(category_purchase_days_.+|purchase_days)", 1),
    (r"(category_purchase_days_per_30d_.+|purchase_days_per_30d)", 1),
    (r"view_to_cart_ratio_\d+d", 1),
    (r"email_(open|click)_rate_\d+d", 1),
)


def monotone_direction(name: str, family: str) -> int:
    """The declared monotone direction of a feature (see ``MONOTONE_RULES``): 1, -1 or 0.

    ``family`` keeps the rules to the families they were written for: a profile attribute or
    a trend never matches a count's pattern by accident.
    """
    if family not in ("activity", "recency", "monetary", "funnel", "channel", "category", "purchase_cycle"):
        return 0
    for pattern, direction in MONOTONE_RULES:
        if re.fullmatch(pattern, name):
            return direction
    return 0
