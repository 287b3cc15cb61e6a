"""Journeys over the stitched, point-in-time profiles: funnels with fallout (the query in
:mod:`.funnel_sql`, the figures in :mod:`.funnel`), the most frequent paths to or from an event
(:mod:`.paths`), and attribution of an outcome to the touchpoints before it (:mod:`.touches`:
the touchpoint paths; :mod:`.attribution`: rules, every method and bootstrap intervals, with the
exact Markov removal effect by absorbing-chain algebra in :mod:`.markov` and exact Shapley
values over channel sets in :mod:`.shapley`). Steps are parsed in :mod:`.spec`; each query is
written once in :class:`propensity.features.sql.Dialect` and runs on DuckDB or Spark through
:mod:`.engine`."""

from propensity.features.journeys.attribution import METHODS, Attribution, attribute
from propensity.features.journeys.engine import DuckDBRunner, Runner
from propensity.features.journeys.funnel import run_funnel, summarise
from propensity.features.journeys.funnel_sql import FunnelSpec
from propensity.features.journeys.paths import run_paths
from propensity.features.journeys.spec import Exclusion, Step, parse_duration, parse_exclusion, parse_steps
from propensity.features.journeys.touches import Paths, run_touches

__all__ = [
    "METHODS",
    "Attribution",
    "DuckDBRunner",
    "Exclusion",
    "FunnelSpec",
    "Paths",
    "Runner",
    "Step",
    "attribute",
    "parse_duration",
    "parse_exclusion",
    "parse_steps",
    "run_funnel",
    "run_paths",
    "run_touches",
    "summarise",
]
