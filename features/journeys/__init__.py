"""Journeys over the stitched, point-in-time profiles: funnels with fallout (:mod:`.funnel`),
the most frequent paths to or from an event (:mod:`.paths`), and attribution of an outcome to
the touchpoints before it, by rules and by exact data-driven methods (:mod:`.attribution`:
the Markov removal effect by absorbing-chain algebra, Shapley values over channel sets).
Steps are parsed in :mod:`.spec`; each query is written once and runs on DuckDB or Spark
through :mod:`.engine`."""

from propensity.features.journeys.engine import DuckDBRunner, Runner
from propensity.features.journeys.spec import Exclusion, Step, parse_duration, parse_exclusion, parse_steps

__all__ = [
    "DuckDBRunner",
    "Exclusion",
    "Runner",
    "Step",
    "parse_duration",
    "parse_exclusion",
    "parse_steps",
]
