"""The building blocks of the feature registry: measures, aggregates, features, feature sets.

* a **measure** is a per-event expression (``event_type = 'purchase'`` as 0/1, the revenue
  of a purchase, ...) that can be summed (or maxed) per profile and day, which is what the
  daily rollup stores;
* an **aggregate** applies SUM / MAX / a last-day lookup to a measure over a half-open
  window ``[as_of - start, as_of - end)`` in whole days;
* a **feature** is an expression over aggregates (a ratio, a deepest funnel stage, ...).

The declarations themselves live in :mod:`propensity.features.build.registry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The condition of the measure every event meets: its daily sum is the day's event count.
EVERY_EVENT = "TRUE"


@dataclass(frozen=True)
class Measure:
    """A per-event expression that the daily rollup stores as ``rollup`` (sum or max) per day."""

    name: str
    sql: str
    rollup: str = "sum"
    sql_type: str = "INTEGER"  # the rollup's column type
    condition: str | None = None  # set for a 0/1 measure: the condition that makes it 1

    @classmethod
    def indicator(cls, name: str, condition: str) -> Measure:
        """1 for the events that meet ``condition``, else 0: counted per day by the rollup."""
        return cls(name, f"CASE WHEN {condition} THEN 1 ELSE 0 END", condition=condition)


@dataclass(frozen=True)
class Aggregate:
    """``fn`` over a measure in ``[as_of - start, as_of - end)`` days; ``start=None`` = lookback."""

    name: str
    measure: str
    fn: str  # sum | max | last_day | first_day | active_days
    start: int | None
    end: int = 0


@dataclass(frozen=True)
class Feature:
    """A named, labelled column of the feature table: an expression over aggregates."""

    name: str
    label: str
    family: str
    sql: str  # over aggregate columns (and ``as_of_day``)
    aggregates: tuple[Aggregate, ...] = ()
    is_feature: bool = True  # False: carried in the table (consent flags) but never modelled
    sensitive: bool = False
    # How the chance of acting moves with this feature, where that is a fact and not a pattern
    # of one data set: 1 never lowers it, -1 never raises it, 0 no constraint (the registry
    # declares it per family, see ``monotone.monotone_direction``).
    monotone: int = 0

    def reach(self, lookback_days: int) -> int:
        """How many days back from as_of this feature looks: older events cannot change it (0 for
        a feature of the date alone, such as the time of year)."""
        return max((lookback_days if a.start is None else a.start for a in self.aggregates), default=0)


@dataclass(frozen=True)
class Trait:
    """A declared profile attribute joined after aggregation (``features.traits``)."""

    name: str
    kind: str  # numeric | categorical
    label: str
    sensitive: bool = False  # carried for rules, never a model feature


@dataclass
class FeatureSet:
    """The compiled registry for one config, category list and learned event types."""

    measures: dict[str, Measure]
    features: list[Feature]
    lookback_days: int
    categories: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)  # learned (non-canonical) event types
    traits: tuple[Trait, ...] = ()

    @property
    def aggregates(self) -> dict[str, Aggregate]:
        """Every aggregate the features read, by name."""
        out: dict[str, Aggregate] = {}
        for feature in self.features:
            for aggregate in feature.aggregates:
                out[aggregate.name] = aggregate
        return out

    def labels(self) -> dict[str, str]:
        """Feature name -> human label."""
        return {f.name: f.label for f in self.features}

    def select(self, include: list[str] | None = None, exclude: list[str] | None = None) -> FeatureSet:
        """A subset by exact name or family name; measures are pruned to what is used."""
        chosen = [f for f in self.features if is_selected(f.name, f.family, include, exclude)]
        used = {a.measure for f in chosen for a in f.aggregates}
        return FeatureSet(
            {k: v for k, v in self.measures.items() if k in used},
            chosen,
            self.lookback_days,
            self.categories,
            self.event_types,
            self.traits,
        )

    def monotone(self, occurs: bool = True) -> dict[str, int]:
        """Feature name -> monotone direction for an outcome that occurs (``occurs=False``,
        churn, flips every direction: what makes a purchase likelier makes its absence less)."""
        sign = 1 if occurs else -1
        return {f.name: sign * f.monotone for f in self.features if f.is_feature}

    def names(self, model_features_only: bool = True) -> list[str]:
        """Feature names in table order; with ``False``, also carried columns (consent)."""
        return [f.name for f in self.features if f.is_feature or not model_features_only]


def is_selected(name: str, family: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    """Include (empty = everything) and exclude, each by exact feature name or family name."""
    included = not include or name in include or family in include
    return included and not (exclude and (name in exclude or family in exclude))


def safe_ratio(numerator: str, denominator: str) -> str:
    """SQL for ``numerator / denominator`` as a double, NULL when the denominator is not positive."""
    return f"CASE WHEN {denominator} > 0 THEN CAST({numerator} AS DOUBLE) / {denominator} END"


def column_parts(values: list[str]) -> dict[str, str]:
    """Each data value's part in column names: lower case, letters, digits and ``_``, unique.

    Categories and event types come from the data ("Yoga Mats", ``web.formFilledOut``);
    column names must not.
    """
    names: dict[str, str] = {}
    for value in values:
        base = re.sub(r"[^0-9a-z]+", "_", value.lower()).strip("_") or "blank"
        name, n = base, 2
        while name in names.values():
            name, n = f"{base}_{n}", n + 1
        names[value] = name
    return names
