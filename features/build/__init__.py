"""Building model inputs: the feature registry (:mod:`.registry`, one function per family) compiled
to each engine's SQL (:mod:`.sql_compiler`), outcome labels and populations (:mod:`.labels`),
rules (:mod:`.rules`), and the stacked snapshots of training (:mod:`.stacked_build` over the
compiled :mod:`.kernels`, imported on use: numba is slow to load)."""

from propensity.features.build.feature_set import Feature, FeatureSet
from propensity.features.build.registry import build_registry
from propensity.features.build.rules import Rule, parse_rule
from propensity.features.build.selection import model_features

__all__ = ["Feature", "FeatureSet", "Rule", "build_registry", "model_features", "parse_rule"]
