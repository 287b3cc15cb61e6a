"""Which features a model trains on: its include / exclude by name or family, refused
sensitive features, and the profile attributes joined after aggregation."""

from __future__ import annotations

from propensity.core.config import FeatureSelection, GovernanceConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import FeatureSet, is_selected

# Profile attributes joined after aggregation; see sql_compiler.PROFILE_FEATURES for their SQL.
PROFILE_ATTRIBUTE_FEATURES: dict[str, tuple[str, str]] = {
    "loyalty_tier": ("Loyalty tier", "profile"),
    "tenure_days": ("Days since sign-up", "profile"),
}


def model_features(
    fs: FeatureSet, selection: FeatureSelection, governance: GovernanceConfig, model_name: str
) -> dict[str, str]:
    """The features a model trains on, name -> label, in registry order.

    ``selection`` includes / excludes by name or family; features ``governance`` labels
    sensitive are dropped, and naming one in ``include`` is refused, as is an unknown name.
    """
    labels = fs.labels()
    families = {f.name: f.family for f in fs.features if f.is_feature}
    for name, (label, family) in PROFILE_ATTRIBUTE_FEATURES.items():
        families[name], labels[name] = family, label
    include, exclude = set(selection.include), set(selection.exclude)
    unknown = sorted((include | exclude) - set(families) - set(families.values()))
    if unknown:
        raise UserError(
            f"model '{model_name}': features include/exclude names unknown feature or family `{unknown[0]}`"
        )
    sensitive = set(governance.sensitive_features)
    refused = sorted(include & sensitive)
    if refused:
        raise UserError(
            f"model '{model_name}': feature `{refused[0]}` is labelled sensitive and is refused for "
            f"marketing action '{governance.marketing_action}'"
        )
    return {
        name: labels[name]
        for name, family in families.items()
        if is_selected(name, family, list(include), list(exclude)) and name not in sensitive
    }
