"""Features of the event types a project's data adds to the contract's vocabulary.

A retailer's events carry types the contract does not name (``campaign_received``,
``coupon_redeemed``). The most frequent of them before the training snapshot
(``features.max_learned_event_types``, learned like product categories and stored with the
model) each get a count and active days per window and the days since the last one: family
``learned_event``, no monotone direction (nothing says whether a custom type is engagement).

Declared with the same measures and aggregates as every other feature
(:mod:`propensity.features.build.feature_set`), so DuckDB, Spark, one snapshot and stacked
snapshots compute them alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from propensity.features.build.feature_set import Aggregate, Feature, Measure

FAMILY = "learned_event"
AggregateOf = Callable[..., Aggregate]  # registry._agg: (measure, fn, start, end=0) -> Aggregate


def spoken(event_type: str) -> str:
    """A type as people read it: ``campaign_received`` -> ``campaign received``."""
    return re.sub(r"[_.\s]+", " ", event_type).strip().lower() or event_type


def learned_event_measures(named: dict[str, str]) -> dict[str, Measure]:
    """One 0/1 measure per learned type: the event is of that type."""
    out = {}
    for event_type, name in named.items():
        safe = event_type.replace("'", "''")
        out[f"event_{name}"] = Measure.indicator(f"event_{name}", f"event_type = '{safe}'")
    return out


def learned_event_features(
    agg: AggregateOf, named: dict[str, str], windows: list[int], window_label: Callable[[int], str]
) -> list[Feature]:
    """Per learned type: events and active days per window, days since the last one."""
    out = []
    for event_type, name in named.items():
        what, measure = spoken(event_type), f"event_{name}"
        for w in windows:
            count, days = agg(measure, "sum", w), agg(measure, "active_days", w)
            label = window_label(w)
            out += [
                Feature(
                    f"event_{name}_count_{w}d",
                    f"{what.capitalize()} events, {label}",
                    FAMILY,
                    count.name,
                    (count,),
                ),
                Feature(
                    f"event_{name}_active_days_{w}d",
                    f"Days with {what} events, {label}",
                    FAMILY,
                    days.name,
                    (days,),
                ),
            ]
        last = agg(measure, "last_day", None)
        out.append(
            Feature(
                f"days_since_last_event_{name}",
                f"Days since the last {what} event",
                FAMILY,
                f"as_of_day - {last.name}",
                (last,),
            )
        )
    return out
