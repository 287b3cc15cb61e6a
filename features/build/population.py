"""Who a model is for: its ``population`` rule over the feature table's columns."""

from __future__ import annotations

from propensity.core.config import ModelConfig
from propensity.features.build.feature_set import FeatureSet
from propensity.features.build.rules import Rule, parse_rule


def population_rule(model: ModelConfig, fs: FeatureSet) -> Rule:
    """The model's population, checked against the feature names it may use."""
    return parse_rule(
        model.population, fs.names(model_features_only=False), f"model '{model.name}': population"
    )
