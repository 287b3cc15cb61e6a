"""Building model inputs: the feature registry (:mod:`.registry`, one function per family) compiled
to each engine's SQL (:mod:`.sql_compiler`); which features a model may use (:mod:`.selection`);
snapshot dates (:mod:`.snapshots`) and populations (:mod:`.population`); the frames a model
reads and their labels, written once for both engines (:mod:`.model_frames`); the small
questions asked of loaded events (:mod:`.event_queries`); rules (:mod:`.rules`);
and the stacked snapshots of training (:mod:`.stacked_build` over the compiled
:mod:`.kernels`, imported on use: numba is slow to load)."""

from propensity.features.build.feature_set import Feature, FeatureSet
from propensity.features.build.model_frames import population_snapshot, training_frame
from propensity.features.build.population import population_rule
from propensity.features.build.registry import build_registry
from propensity.features.build.rules import Rule, parse_rule
from propensity.features.build.selection import model_features
from propensity.features.build.snapshots import snapshot_dates

__all__ = [
    "Feature",
    "FeatureSet",
    "Rule",
    "build_registry",
    "model_features",
    "parse_rule",
    "population_rule",
    "population_snapshot",
    "snapshot_dates",
    "training_frame",
]
