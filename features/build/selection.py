"""Which features a model trains on: its include / exclude by name or family, refused
sensitive features (and sensitive traits), and the profile attributes joined after aggregation."""

from __future__ import annotations

import datetime as dt

from propensity.core.config import FeatureSelection, GovernanceConfig, ModelConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet, is_selected

# Profile attributes joined after aggregation; see sql_compiler.PROFILE_FEATURES for their SQL.
PROFILE_ATTRIBUTE_FEATURES: dict[str, tuple[str, str]] = {
    "loyalty_tier": ("Loyalty tier", "profile"),
    "tenure_days": ("Days since sign-up", "profile"),
}


def attribute_features(fs: FeatureSet) -> dict[str, tuple[str, str]]:
    """Every profile attribute a model may train on: tier, tenure and the non-sensitive traits,
    name -> (label, family)."""
    traits = {t.name: (t.label, "trait") for t in fs.traits if not t.sensitive}
    return {**PROFILE_ATTRIBUTE_FEATURES, **traits}


def model_features(
    fs: FeatureSet, selection: FeatureSelection, governance: GovernanceConfig, model_name: str
) -> dict[str, str]:
    """The features a model trains on, name -> label, in registry order.

    ``selection`` includes / excludes by name or family; features ``governance`` labels
    sensitive are dropped, and naming one in ``include`` is refused, as is an unknown name.
    """
    labels = fs.labels()
    families = {f.name: f.family for f in fs.features if f.is_feature}
    for name, (label, family) in attribute_features(fs).items():
        families[name], labels[name] = family, label
    include, exclude = set(selection.include), set(selection.exclude)
    sensitive_traits = {t.name for t in fs.traits if t.sensitive}
    unknown = sorted((include | exclude) - set(families) - set(families.values()) - sensitive_traits)
    if unknown:
        raise UserError(
            f"model '{model_name}': features include/exclude names unknown feature or family `{unknown[0]}`"
        )
    sensitive = set(governance.sensitive_features) | sensitive_traits
    refused = sorted(include & sensitive)
    if refused:
        where = "features.traits" if refused[0] in sensitive_traits else "governance.sensitive_features"
        raise UserError(
            f"model '{model_name}': feature `{refused[0]}` is labelled sensitive ({where}) and is refused "
            f"for marketing action '{governance.marketing_action}'"
        )
    return {
        name: labels[name]
        for name, family in families.items()
        if is_selected(name, family, list(include), list(exclude)) and name not in sensitive
    }


def table_features(fs: FeatureSet) -> list[str]:
    """The modelled columns a feature table carries: the registry's features, then the profile
    attributes every snapshot joins (null when the profiles file has none)."""
    return [*fs.names(), *attribute_features(fs)]


def feature_count_note(fs: FeatureSet, selected: int, categories: str) -> str:
    """What a feature count is made of, in the words ``train``, ``features`` and ``score``
    share: ``selected`` of the table's features (events + profile attributes) and where the
    product categories came from (``categories``: "learned from events before DATE", ...)."""
    events, attributes = len(fs.names()), len(attribute_features(fs))
    total = events + attributes  # len(table_features(fs))
    parts = f"{events} from events + {attributes} profile attributes and traits"
    chosen = f"{selected} of {total} features" if selected != total else f"{total} features"
    learned = f"{len(fs.categories)} product categories" if fs.categories else "no product categories"
    return f"{chosen} ({parts}); {learned} {categories}"


def categories_source(config_categories: list[str] | None, before: dt.date) -> str:
    """Where a feature set's product categories came from, for :func:`feature_count_note`."""
    return "from the config" if config_categories is not None else f"learned from events before {before}"


def model_columns(
    fs: FeatureSet, model: ModelConfig, config_categories: list[str] | None, before: dt.date
) -> tuple[dict[str, str], str]:
    """What a model trains on, asked once by the train job: its features, name -> label
    (:func:`model_features`), and what their count is made of (:func:`feature_count_note`; the
    product categories the config's, or learned from events before ``before``)."""
    labels = model_features(fs, model.features, model.governance, model.name)
    return labels, feature_count_note(fs, len(labels), categories_source(config_categories, before))
